"""Whose BatchNorm statistics a supernet holds (issue 11, "no silent wrong model")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import enas4d
from enas4d.checkpoint import load_supernet, make_meta
from enas4d.nn.bn import BNStatsError, bn_buffers, load_bn_buffers, reestimate_bn
from enas4d.transform import from_static

DATA = {"name": "random", "cfg": {}, "mean": [0.0] * 3, "std": [1.0] * 3,
        "class_names": [str(i) for i in range(10)], "image_size": 32}


def _net(stages: int = 2):
    return enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=stages)


def _batches(n: int = 2):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(n)]


def test_another_subnet_is_refused_until_re_estimated():
    net = _net()
    big, small = net.space.largest(), net.space.smallest()
    x = _batches(1)[0]
    with pytest.raises(BNStatsError, match="estimated for no known subnet.*reestimate_bn"):
        net.eval()(x)  # a new network: its statistics belong to no subnet
    reestimate_bn(net, [x])
    assert net.bn_subnet == big
    assert len(net(x)) == 2
    net.extract(big)
    net.set_subnet(dataclasses.replace(big, exits=(False, True)))
    assert len(net(x)) == 1  # the same architecture with fewer exits: the same statistics
    net.set_subnet(small)
    with pytest.raises(BNStatsError) as err:
        net(x)
    msg = str(err.value)
    assert "\n" not in msg and small.to_json() in msg and big.to_json() in msg  # names both
    with pytest.raises(BNStatsError, match="^extract subnet"):
        net.extract(small)
    net.train()(x)  # training mode uses batch statistics: nothing to check
    reestimate_bn(net, [x])  # for the active subnet, the smallest
    assert net.bn_subnet == small
    net.eval()(x)
    net.extract(small)
    with pytest.raises(BNStatsError):
        net.extract(big)
    with net.bn_unchecked():  # shapes only
        net.extract(big)
    with pytest.raises(BNStatsError):
        net.extract(big)


def test_statistics_of_fewer_exits_do_not_serve_more():
    net = _net()
    s = dataclasses.replace(net.space.largest(), exits=(False, True))
    net.set_subnet(s)
    reestimate_bn(net, _batches(1))  # exit 1's head did not run
    with pytest.raises(BNStatsError):
        net.extract(net.space.largest())


def test_the_tag_survives_state_dict_and_checkpoint(tmp_path):
    net = _net()
    s = net.space.smallest()
    net.set_subnet(s)
    reestimate_bn(net, _batches())
    other = _net()
    other.load_state_dict(net.state_dict())
    assert other.bn_subnet == s
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                "enas4d": make_meta(net, DATA)}, path)
    loaded, _ = load_supernet(path)  # in eval mode, with the largest subnet active
    assert loaded.bn_subnet == s
    x = _batches(1)[0]
    with pytest.raises(BNStatsError):
        loaded(x)
    loaded.set_subnet(s)
    net.eval().set_subnet(s)
    for a, b in zip(loaded(x), net(x)):
        assert torch.equal(a, b)


def test_a_state_dict_without_the_tag_loads_as_unknown():
    net = _net()
    reestimate_bn(net, _batches(1))
    old = {k: v for k, v in net.state_dict().items() if k != "_extra_state"}  # saved before the tag existed
    other = _net()
    other.load_state_dict(old)  # strict
    assert other.bn_subnet is None
    with pytest.raises(BNStatsError, match="no known subnet"):
        other.eval()(_batches(1)[0])


def test_saved_buffers_carry_their_subnet():
    net = _net()
    big, small = net.space.largest(), net.space.smallest()
    reestimate_bn(net, _batches())
    saved = bn_buffers(net)
    assert saved.subnet == big
    net.set_subnet(small)
    reestimate_bn(net, _batches())
    load_bn_buffers(net, saved)
    assert net.bn_subnet == big
    net.eval()
    with pytest.raises(BNStatsError):
        net(_batches(1)[0])  # small is active, the statistics are the largest's again
    net.set_subnet(big)
    net(_batches(1)[0])
    load_bn_buffers(net, list(saved))  # plain pairs: whose they are is unknown
    assert net.bn_subnet is None


def test_static_statistics_serve_only_the_static_subnet():
    static = enas4d.create_supernet("resnet20_static", num_classes=10, num_stages=1).eval()
    x = _batches(1)[0]
    static(x)  # a plain network (one architecture): its statistics are its own
    assert static.bn_subnet == static.space.largest()
    split = from_static(static, num_stages=3).eval()  # the static statistics, split: nobody's
    with pytest.raises(BNStatsError, match="another search space"):
        split(x)
    reestimate_bn(split, [x])
    split(x)
    wider = from_static(static, num_stages=1, width_mults=(0.5, 1.0), kernels=(3, 5)).eval()
    assert wider.bn_subnet == static.bn_subnet  # the static architecture, still in the new space
    wider.set_subnet(static.space.largest())
    assert torch.allclose(wider(x)[0], static(x)[0], atol=1e-5)
    with pytest.raises(BNStatsError):
        wider.extract(wider.space.largest())  # 5x5 kernels: not the static architecture
