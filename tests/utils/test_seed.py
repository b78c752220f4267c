"""Tests of enas4d.utils.seed: stable, key-sensitive generators."""

import numpy as np
import pytest
import torch

from enas4d.utils.seed import derive_seed, make_generator


def test_same_keys_same_stream():
    a = torch.rand(5, generator=make_generator(3, 1, 2))
    b = torch.rand(5, generator=make_generator(3, 1, 2))
    assert torch.equal(a, b)


def test_keys_and_their_order_matter():
    keys = [(0,), (0, 0), (0, 1), (1, 0), (0, 1, 2), (0, 12)]
    assert len({derive_seed(*k) for k in keys}) == len(keys)
    assert derive_seed(0, 1, 23) != derive_seed(0, 12, 3)


def test_golden_values_are_stable():
    # Guards the hash against accidental change: checkpoints and caches rely on these streams.
    assert derive_seed(0) == 2960001820984935207
    assert derive_seed(0, 1) == 3560160468837810518
    assert 0 <= derive_seed(-5, 10**30) < 2**63


def test_numpy_ints_accepted_and_non_ints_rejected():
    assert derive_seed(np.int64(7), np.int32(1)) == derive_seed(7, 1)
    with pytest.raises(TypeError, match="ints"):
        derive_seed(0, 1.5)
    with pytest.raises(TypeError, match="ints"):
        derive_seed(0, True)
    with pytest.raises(TypeError, match="ints"):
        make_generator("0")


def test_generator_device():
    assert make_generator(0, device="cpu").device.type == "cpu"
