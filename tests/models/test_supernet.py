"""Invariants of every registered supernet family (design.md section 3, issue 2)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import enas4d
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.bn import reestimate_bn
from enas4d.space import InvalidSubnetError
from tests.models.helpers import perturb_after, randomize_bn

# (family, random subnets to check, batch): the ImageNet family is large, so fewer and smaller.
FAMILIES = [("resnet_cifar", 4, 2), ("resnet56_cifar", 1, 2), ("mbv3_cifar", 3, 2), ("mbv3_imagenet", 0, 1),
            ("resnet_cifar+slices", 4, 2), ("mbv3_cifar+slices", 2, 2)]
# "+slices": unequal slices (the first stage narrow) and a last stage that reads only its own slice
# (the paper's concat indicators as NetSpec.slice_fracs / reads_from).
SLICES = {"slice_fracs": (0.25, 0.25, 0.5), "reads_from": (0, 0, 2)}


def _build(name: str) -> MultiStageSupernet:
    base, _, variant = name.partition("+")
    net = enas4d.create_supernet(base, num_classes=10, num_stages=3)
    if variant:
        net = MultiStageSupernet(dataclasses.replace(net.spec, **SLICES), 10, 3, name=name)
    return net


def _subnets(net, n: int, seed: int):
    """Largest, smallest and n random subnets (random exits); ImageNet at its smallest resolution."""
    gen = torch.Generator().manual_seed(seed)
    subs = [net.space.largest(), net.space.smallest()] + [net.space.sample(gen) for _ in range(n)]
    if net.name == "mbv3_imagenet":
        subs = [dataclasses.replace(s, resolution=min(net.space.resolutions)) for s in subs]
    return subs


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def family(request):
    name, n, batch = request.param
    net = _build(name)
    randomize_bn(net, torch.Generator().manual_seed(1))
    return net.eval(), n, batch


def test_static_equals_supernet(family):
    net, n, batch = family
    x = torch.randn(batch, 3, 32, 32)  # resized inside to each subnet's resolution
    with torch.no_grad():
        for s in _subnets(net, n, seed=2):
            net.set_subnet(s)
            ref = net(x)
            out = net.extract(s)(x)
            assert len(ref) == len(out) == sum(s.exits)
            for a, b in zip(ref, out):
                assert a.shape == (batch, 10)
                assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_causality(family, mode):
    net, n, batch = family
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(max(batch, 2), 3, 32, 32)
    s = _subnets(net, 1, seed=4)[-1].with_all_exits()
    for k in range(net.num_stages - 1):
        probe = _build(net.name)
        probe.load_state_dict(net.state_dict())
        probe.bn_check = False  # randomize_bn's statistics, used for every subnet on purpose
        probe.train(mode == "train")
        probe.set_subnet(s)
        with torch.no_grad():
            before = probe(x)
            perturb_after(probe, k, gen)
            after = probe(x)
        for j in range(k + 1):
            assert torch.equal(before[j], after[j]), f"exit {j} changed when slices > {k} changed"
        assert not torch.allclose(before[-1], after[-1]), "the perturbation should change the last exit"


def test_leading_stages_compute_only_their_own_slices(family):
    """set_subnet(s, stages=m) (training a frozen last stage away): the first m exits as in the full
    forward, nothing of later stages computed (fewer MACs counted)."""
    net, n, batch = family
    x = torch.randn(max(batch, 2), 3, 32, 32)
    s = _subnets(net, 1, seed=5)[-1].with_all_exits()
    net.train()
    try:
        with torch.no_grad():
            net.set_subnet(s)
            full = net(x)
            full_macs = _counted_macs(lambda: net(x))
            for m in range(1, net.num_stages):
                net.set_subnet(s, m)
                part = net(x)
                assert len(part) == m
                for a, b in zip(part, full):
                    assert torch.allclose(a, b, atol=1e-6)
                assert _counted_macs(lambda: net(x)) < full_macs
            net.to("cpu")  # a move rebuilds the plan: the stage limit stays
            assert len(net(x)) == net.num_stages - 1
    finally:
        net.set_subnet(s)
        net.eval()
    with pytest.raises(ValueError, match=r"stages=0 not allowed; allowed: 1..3"):
        net.set_subnet(s, 0)


def _counted_macs(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    flops = fc.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def test_macs_match_flop_counter_and_no_recomputation(family):
    net, n, _ = family
    x = torch.randn(1, 3, 32, 32)
    for s in _subnets(net, n, seed=5):
        static = net.extract(s)
        img = static.resize(x)
        body, heads = net.stage_macs(s)
        cumulative, total, prev = [], 0, []
        with torch.no_grad():
            for k, stage in enumerate(static.stages):
                taps = prev
                increment = _counted_macs(lambda: stage(img, taps))
                # No recomputation: stage k costs exactly its own slices plus its own head.
                assert increment == body[k] + (heads[k] if s.exits[k] else 0)
                total += increment
                if s.exits[k]:
                    cumulative.append(total)
                _, prev = stage(img, prev)
        assert cumulative == net.macs(s)
        # And the whole static model, run once, counts the last exit's cumulative MACs.
        assert _counted_macs(lambda: static(x)) == net.macs(s)[-1]


def test_macs_monotone_in_stage_and_size(family):
    net, _, _ = family
    small, large = net.macs(net.space.smallest()), net.macs(net.space.largest())
    assert all(a < b for a, b in zip(large, large[1:]))
    assert all(a < b for a, b in zip(small, large))


def test_resnet_cifar_largest_is_resnet20_shaped():
    """Largest widths and depths at 3x3 kernels are ResNet-20 (the space also offers 5x5)."""
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=1)
    largest = net.space.largest()
    s = dataclasses.replace(largest, kernel=tuple(tuple(3 for _ in row) for row in largest.kernel))
    with net.bn_unchecked():  # shapes only
        static = net.extract(s)
    convs = [m for m in static.modules() if isinstance(m, torch.nn.Conv2d)]
    # 1 stem + 9 blocks x 2 convs + 2 projection shortcuts; 16/32/64 channels.
    assert len(convs) == 1 + 18 + 2
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    # ResNet-20 is ~40.55M MACs; the two 1x1 projections add 0.26M.
    assert abs(net.macs(s)[-1] - 40.8e6) < 0.1e6


def test_set_subnet_context_restores():
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    small = net.space.smallest()
    with net.active(small):
        assert net.subnet == small
    assert net.subnet == net.space.largest()


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="registered: .*resnet_cifar"):
        enas4d.create_supernet("resnet_nope")


def test_invalid_subnet_names_field():
    net = enas4d.create_supernet("mbv3_cifar", num_classes=10, num_stages=2)
    s = net.space.largest()
    bad = dataclasses.replace(s, kernel=((3, 3, 4, 3), s.kernel[1]))
    with pytest.raises(InvalidSubnetError, match=r"kernel\[0\]\[2\]=4 .*allowed values: \[3, 5, 7\]"):
        net.set_subnet(bad)
    with pytest.raises(InvalidSubnetError, match="subnet.width: expected a 2x4 grid"):
        net.set_subnet(dataclasses.replace(s, width=s.width[:1]))
    with pytest.raises(InvalidSubnetError, match="subnet.exits"):
        net.set_subnet(dataclasses.replace(s, exits=(True,)))


def test_wrong_input_channels_is_clear():
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    with pytest.raises(ValueError, match=r"input: expected a \(N, 3, H, W\) tensor"):
        net(torch.randn(2, 1, 32, 32))
    with net.bn_unchecked():  # shapes only
        static = net.extract(net.space.smallest())
    with pytest.raises(ValueError, match="input: expected"):
        static(torch.randn(2, 4, 32, 32))


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_num_stages_range(k):
    net = enas4d.create_supernet("resnet_cifar", num_classes=7, num_stages=k)
    s = net.space.sample(torch.Generator().manual_seed(k))
    net.set_subnet(s)
    x = torch.randn(2, 3, 32, 32)
    reestimate_bn(net, [x])
    out = net.eval()(x)
    assert len(out) == sum(s.exits) and out[0].shape == (2, 7)
    with pytest.raises(ValueError, match="num_stages"):
        enas4d.create_supernet("resnet_cifar", num_stages=7)


def test_training_mode_backward_reaches_only_active_weights():
    net = enas4d.create_supernet("mbv3_cifar", num_classes=10, num_stages=3).train()
    s = net.space.smallest()
    net.set_subnet(s)
    loss = sum(o.logsumexp(1).mean() for o in net(torch.randn(4, 3, 32, 32)))
    loss.backward()
    w = net.blocks[0].convs[0].weight  # expand conv of the first block
    used = torch.zeros_like(w, dtype=torch.bool)
    assert w.grad is not None and w.grad.abs().sum() > 0
    # Inactive hidden channels (beyond expand * width) get no gradient.
    assert (w.grad.abs().sum((1, 2, 3)) > 0).sum() < w.shape[0]
    del used


@pytest.mark.parametrize("name", ["resnet_cifar", "mbv3_cifar"])
def test_plans_live_on_the_model_device(name):
    """A model moved to another device (meta: no data, same device checks as CUDA) runs every subnet,
    including those whose slices end at different depths (index_add over part of the channels)."""
    from enas4d.training.losses import multi_exit_loss

    net = enas4d.create_supernet(name, num_classes=10, num_stages=3).to("meta")
    gen = torch.Generator().manual_seed(3)
    subnets = [net.space.largest(), net.space.smallest()] + [net.space.sample(gen) for _ in range(4)]
    assert any(len({row[g] for row in s.depth}) > 1 for s in subnets for g in range(net.space.num_groups))
    x, y = torch.rand(2, 3, 32, 32, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    for s in subnets:
        net.set_subnet(s)
        plan = net._plan
        tensors = [t for bp in plan.blocks if bp is not None for t in [bp.res_idx, *(c.mask for c in bp.convs)]
                   if t is not None]
        assert all(t.device.type == "meta" for t in tensors)
        logits = net(x)
        loss, _ = multi_exit_loss(logits, y, [1.0] * len(logits), 0.1)
        loss.backward()
        assert logits[-1].device.type == "meta"


def test_basic_blocks_refuse_a_non_idempotent_activation():
    """hswish after the residual add would be applied again to slices that skip a block."""
    import dataclasses as dc

    from enas4d.models.families import RESNET_CIFAR
    from enas4d.models.spec import GroupSpec

    spec = dc.replace(RESNET_CIFAR, groups=(GroupSpec(16, 2, 1, "hswish"), GroupSpec(32, 2, 2)))
    with pytest.raises(ValueError, match=r"spec.groups\[\].act='hswish' not allowed with basic blocks; "
                                         r"allowed values: \['relu', 'none'\]"):
        MultiStageSupernet(spec, 10, 3)
