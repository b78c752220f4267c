"""S2DNAS transform (issue 9): a static network split into K stages keeps its function and weights."""

from __future__ import annotations

import pytest
import torch

import enas4d
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.layers import MSConv2d
from enas4d.transform import TransformError, channel_importance, from_static, sort_channels
from enas4d.transform.sources import load_static, static_names
from tests.models.helpers import randomize_bn

STATIC = ["resnet20_static", "resnet56_static", "mbv3_static"]


def _static(name: str, seed: int = 1) -> MultiStageSupernet:
    torch.manual_seed(seed)
    net = enas4d.create_supernet(name, num_classes=10, num_stages=1)
    randomize_bn(net, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # damp residual branches, as trained ResNets do: logits of a few units, not 1e4
        for blk in net.blocks:
            blk.bns[-1].weight.mul_(0.2)
    return net.eval()


def test_static_names_are_the_one_architecture_networks():
    assert set(STATIC) <= set(static_names())
    assert "resnet_cifar" not in static_names()


@pytest.mark.parametrize("name", STATIC)
def test_k1_equals_static(name):
    static = _static(name)
    x = torch.rand(2, 3, 32, 32)
    net = from_static(static, num_stages=1).eval()
    with torch.no_grad():
        assert (net(x)[-1] - static(x)[-1]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["resnet20_static", "mbv3_static"])
def test_sorting_keeps_function_and_orders_by_importance(name):
    static = _static(name)
    x = torch.rand(2, 3, 32, 32)
    ordered = sort_channels(static).eval()
    with torch.no_grad():
        assert (ordered(x)[-1] - static(x)[-1]).abs().max().item() <= 1e-5
    before, _ = channel_importance(static)
    groups, hidden = channel_importance(ordered)
    assert any(not torch.equal(a, b) for a, b in zip(before, groups))  # random weights: it moved something
    for imp in groups + hidden:
        assert bool((imp[:-1] >= imp[1:] - 1e-6).all())  # most important channel first


def test_k3_weight_blocks_are_the_static_blocks():
    static = _static("resnet20_static")
    net = from_static(static, num_stages=3, width_mults=(0.5, 1.0), kernels=(3, 5), depths=(2, 3))
    ordered = sort_channels(static).state_dict()
    for key, t in net.state_dict().items():
        if key.startswith("heads."):
            continue
        src = ordered[key]
        if t.dim() == 4 and t.shape[-1] == 5 and src.shape[-1] == 3:  # larger kernel: static centre, zero ring
            assert torch.equal(t[:, :, 1:4, 1:4], src)
            ring = t.clone()
            ring[:, :, 1:4, 1:4] = 0
            assert not ring.any()
        else:
            assert torch.equal(t, src), key
    w = ordered["heads.0.classifier.weight"]  # (classes, 64)
    assert torch.equal(net.heads[2].classifier.weight, w)  # the last exit is the static classifier
    n1 = net.heads[0].classifier.weight.shape[1]
    assert torch.equal(net.heads[0].classifier.weight, w[:, :n1])  # exit 1 reads the first slice


def test_k3_is_causal_and_extracts():
    static = _static("resnet20_static")
    net = from_static(static, num_stages=3, width_mults=(0.5, 1.0), depths=(1, 3)).eval()
    net.bn_check = False  # the static network's statistics, for every subnet on purpose
    x = torch.rand(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    for s in [net.space.largest(), net.space.smallest(), net.space.sample(gen)]:
        net.set_subnet(s)
        with torch.no_grad():
            ref = net(x)
            out = net.extract(s)(x)
        for a, b in zip(ref, out):
            assert (a - b).abs().max().item() <= 1e-5
    # Causality: changing stage 3's rows of a layer leaves exits 1 and 2 unchanged.
    net.set_subnet(net.space.largest())
    with torch.no_grad():
        before = net(x)
        conv: MSConv2d = net.blocks[4].convs[0]
        conv.weight[-conv.out_chs[-1]:] += 1.0
        after = net(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2])


def test_bad_input_is_one_clear_error(tmp_path):
    static = _static("resnet20_static")
    with pytest.raises(TransformError, match="num_stages=17 not allowed; allowed: 1..6"):
        from_static(static, num_stages=17)
    with pytest.raises(TransformError, match="kernels=.*allowed: sizes >= the static kernel 3"):
        from_static(static, num_stages=2, kernels=(1, 3))
    with pytest.raises(TransformError, match="source must be a static"):
        from_static(from_static(static, num_stages=2), num_stages=3)
    with pytest.raises(TransformError, match="names no known model"):
        load_static("torchvision:nosuchnet", None, 10, 3)
    with pytest.raises(TransformError, match="supernet.weights: no file"):
        load_static("enas4d:resnet20_static", str(tmp_path / "missing.ckpt"), 10, 3)
    other = tmp_path / "mbv3.pt"
    torch.save(_static("mbv3_static").state_dict(), other)
    with pytest.raises(TransformError, match="neither an enas4d checkpoint nor a state dict of 'resnet20_static'"):
        load_static("enas4d:resnet20_static", str(other), 10, 3)


def test_state_dict_weights_load(tmp_path):
    static = _static("resnet20_static")
    path = tmp_path / "r20.pt"
    torch.save(static.state_dict(), path)
    loaded = load_static("enas4d:resnet20_static", str(path), 10, 3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)[-1], static(x)[-1])


@pytest.mark.parametrize("name", ["resnet20_static", "mbv3_static"])
def test_grow_last_exit_is_the_static_network_at_its_macs(name):
    static = _static(name)
    net = from_static(static, num_stages=3, grow=(0.5, 0.25), width_mults=(0.5, 1.0), depths=(1, 3)).eval()
    net.bn_check = False  # the static statistics (last stage) and fresh ones, used as they are on purpose
    s = net.space.largest()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outs = net(x)
        assert (outs[-1] - static(x)[-1]).abs().max().item() <= 1e-5
        for a, b in zip(outs, net.extract(s)(x)):  # and the extracted network computes the same
            assert (a - b).abs().max().item() <= 1e-5
    body, heads = net.stage_macs(s)
    s_body, s_heads = static.stage_macs(static.space.largest())
    assert body[-1] == s_body[0]  # the last stage reads only its own slice: exactly the static body
    assert body[0] + body[1] < 0.6 * body[-1]  # the new stages together cost about half the static one
    assert heads[-1] > s_heads[0]  # the last exit also reads the new slices (zero-initialised columns)


def test_grow_places_static_weights_in_the_last_slice():
    static = _static("resnet20_static")
    net = from_static(static, num_stages=2, grow=(0.5,), sort=False)
    conv, s_conv = net.blocks[3].convs[0], static.blocks[3].convs[0]  # group 1's first block: 16 -> 32
    assert conv.in_chs == (8, 16) and conv.out_chs == (16, 32)
    assert torch.equal(conv.weight[16:, 8:], s_conv.weight)
    assert not conv.weight[16:, :8].any()  # the static slice ignores the new one
    bn, s_bn = net.blocks[3].bns[0], static.blocks[3].bns[0]
    assert torch.equal(bn.running_var[16:], s_bn.running_var)
    assert torch.equal(net.heads[1].classifier.weight[:, 32:], static.heads[0].classifier.weight)
    assert torch.equal(net.heads[1].classifier.bias, static.heads[0].classifier.bias)


def test_grow_bad_input_is_one_clear_error():
    static = _static("resnet20_static")
    with pytest.raises(TransformError, match=r"grow=\[0.5\] not allowed; allowed: num_stages - 1 = 2"):
        from_static(static, num_stages=3, grow=(0.5,))
    with pytest.raises(TransformError, match="whole number of channels"):
        from_static(static, num_stages=2, grow=(0.3,))
    with pytest.raises(TransformError, match="num_stages=1 not allowed with grow"):
        from_static(static, num_stages=1, grow=())


def test_grow_export_scripts_and_its_last_stage_copies_no_earlier_slice():
    from enas4d.export import jit
    from enas4d.models import static as st

    static = _static("resnet20_static")
    net = from_static(static, num_stages=3, grow=(0.5, 0.25), depths=(1, 3)).eval()
    net.bn_check = False  # the static statistics (last stage) and fresh ones, used as they are on purpose
    s = net.space.largest()
    model = net.extract(s)
    last = model.stages[-1]
    # Its layers read its own taps (no join before them); one JoinOp builds the head's input.
    assert [type(op) for op in last.ops].count(st.JoinOp) == 1 and isinstance(last.ops[-1], st.JoinOp)
    assert all(op.prev_pos < 0 for op in last.ops[:-1])
    x = torch.rand(3, 3, 32, 32)
    scripted = jit.roundtrip(model)
    with torch.no_grad():
        for a, b in zip(net(x), scripted(x)):
            assert (a - b).abs().max().item() <= 1e-5


def test_grow_seeds_the_new_stages_with_the_leading_static_channels():
    static = _static("resnet20_static")
    ordered = sort_channels(static)
    net = from_static(static, num_stages=3, grow=(0.5, 0.25))
    conv, s_conv = net.blocks[4].convs[0], ordered.blocks[4].convs[0]  # group 1: 32 = new 16 + 8, static 32
    assert conv.out_chs == (16, 8, 32)
    assert torch.equal(conv.weight[:24, :24], s_conv.weight[:24, :24])  # the split of the leading 24 channels
    assert torch.equal(net.heads[0].classifier.weight, ordered.heads[0].classifier.weight[:, :32])  # 64 x 0.5
    fresh = from_static(static, num_stages=3, grow=(0.75, 0.5))  # 1.25 > 1: new stages start fresh
    assert not torch.equal(fresh.blocks[4].convs[0].weight[:20, :20], s_conv.weight[:20, :20])


def test_freeze_static_needs_a_grown_supernet():
    from omegaconf import OmegaConf

    from enas4d.transform.sources import training_from_config

    static = _static("resnet20_static")
    split = from_static(static, num_stages=3)
    with pytest.raises(TransformError, match="only a grown supernet"):
        from enas4d.transform.s2dnas import grown_static_masks
        grown_static_masks(split)
    cfg = OmegaConf.create({"grow": None, "freeze_static": True})
    with pytest.raises(TransformError, match="supernet.freeze_static=true not allowed without supernet.grow"):
        training_from_config(cfg, split)
    assert training_from_config(OmegaConf.create({"grow": None, "freeze_static": None}), split) == {}
    grown = from_static(static, num_stages=3, grow=(0.5, 0.25))
    fine_tuning = training_from_config(OmegaConf.create({"grow": [0.5, 0.25], "freeze_static": None}), grown)
    assert fine_tuning["train_stages"] == 2
    masks = fine_tuning["frozen"]
    assert masks["stem.weight"][:12].sum() == 0 and bool(masks["stem.weight"][12:].all())  # 8 + 4 new, 16 static
    assert bool(masks["heads.2.classifier.weight"].all()) and "heads.1.classifier.weight" not in masks


def test_a_fixed_static_stage_has_one_candidate_per_choice():
    static = _static("resnet20_static")
    net = from_static(static, num_stages=3, grow=(0.5, 0.25), depths=(1, 2, 3), kernels=(3, 5), fixed_static=True)
    space = net.space
    assert space.widths[-1] == ((16,), (32,), (64,)) and space.depths[-1] == ((3,), (3,), (3,))
    assert space.kernels[-1] == ((3,), (3,), (3,)) and space.kernels[0][0] == (3, 5)
    assert space.widths[0] == from_static(static, num_stages=3, grow=(0.5, 0.25)).space.widths[0]
    assert space.smallest().width[-1] == (16, 32, 64)  # the static network in every subnet
    with pytest.raises(TransformError, match="fixed_static=true not allowed without grow"):
        from_static(static, num_stages=3, fixed_static=True)


def test_the_plain_network_of_a_grown_supernet_is_its_static_source():
    from enas4d.export.baseline import family_spec

    static = _static("resnet20_static")
    grown = from_static(static, num_stages=3, grow=(0.5, 0.25))
    spec = family_spec({"name": grown.name, "spec": grown.spec.to_dict()})
    assert [g.width for g in spec.groups] == [16, 32, 64] and spec.reads_from is None
    split = from_static(static, num_stages=3)
    assert family_spec({"name": split.name, "spec": split.spec.to_dict()}) == split.spec
