"""Checkpoints are written to a temporary file and renamed: a failed save keeps the old file whole."""

import pytest
import torch

from enas4d.training.checkpoint_io import AtomicCheckpointIO


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"step": 2, "bad": _Unpicklable()}, path)
    assert io.load_checkpoint(path)["step"] == 1  # the good checkpoint is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
