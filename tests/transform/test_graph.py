"""S2DNAS from a model's graph (issue 9): torchvision / timm CNNs split into K stages keep their function
(K = 1), stay causal, and cost what the analytic MACs say, per exit, in the extracted model."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from enas4d.checkpoint import build_supernet
from enas4d.nn.bn import reestimate_bn
from enas4d.nn.layers import MSBatchNorm2d, offsets
from enas4d.transform import GraphSupernet, TransformError, from_static
from enas4d.transform.graph import GraphConv, GraphHead

R = 32  # input side of the K > 1 tests; the K = 1 equivalence runs at 64

MODELS = {
    "torchvision:resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10),
    "torchvision:resnet50": lambda: torchvision.models.resnet50(weights=None, num_classes=10),
    "torchvision:vgg16_bn": lambda: torchvision.models.vgg16_bn(weights=None, num_classes=10),
    "torchvision:mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
    "timm:resnet18": lambda: timm.create_model("resnet18", pretrained=False, num_classes=10),
    "timm:mobilenetv2_100": lambda: timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10),
    "timm:vgg16_bn": lambda: timm.create_model("vgg16_bn", pretrained=False, num_classes=10),
}


class Toy(nn.Module):
    """What the listed models lack: a channel concatenation, a squeeze-excite gate, hardswish, a scalar
    op, average pooling, and a two-layer classifier after global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.Hardswish())
        self.a = nn.Conv2d(12, 6, 1)
        self.b = nn.Sequential(nn.Conv2d(12, 9, 3, 1, 1, bias=False), nn.BatchNorm2d(9), nn.ReLU())
        self.se_reduce, self.se_expand = nn.Conv2d(15, 6, 1), nn.Conv2d(6, 15, 1)
        self.dw = nn.Sequential(nn.Conv2d(15, 15, 3, 1, 1, groups=15, bias=False), nn.BatchNorm2d(15))
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Linear(15, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 7))

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.a(x), self.b(x)], 1)  # (N, 15, H, W)
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = y * gate
        y = self.pool(torch.relu(self.dw(y) + y) * 0.5)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _static(name: str, side: int, seed: int = 0) -> nn.Module:
    """A randomly initialised model with realistic BatchNorm state (statistics of random images)."""
    torch.manual_seed(seed)
    m = MODELS[name]() if name in MODELS else Toy()
    gen = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the batches below
            mod.reset_running_stats()
            with torch.no_grad():
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=gen))
    m.train()
    with torch.no_grad():
        m(torch.rand(4, 3, side, side, generator=gen))
    return m.eval()


@torch.no_grad()
def _perturb_after(net: GraphSupernet, k: int, gen: torch.Generator) -> None:
    """Noise on every weight of slices > k: their rows, the columns of slices > k in the rows of slices
    <= k (which the causal mask must hide), their BatchNorm parameters, and the heads of exits > k."""
    for m in net.modules():
        if isinstance(m, GraphConv):
            scale = 0.5 * m.weight.std()
            for j, (o0, ow) in enumerate(zip(offsets(m.out_chs), m.out_chs)):
                rows = m.weight[o0:o0 + ow]
                if j > k:
                    rows += scale * torch.randn(rows.shape, generator=gen)
                    if m.bias is not None:
                        m.bias[o0:o0 + ow] += torch.randn(ow, generator=gen)
                elif not m.depthwise and len(m.in_chs) > 1:
                    i0 = offsets(m.in_chs)[k + 1] if k + 1 < len(m.in_chs) else m.weight.shape[1]
                    rows[:, i0:] += scale * torch.randn(rows[:, i0:].shape, generator=gen)
        elif isinstance(m, MSBatchNorm2d) and len(m.chs) == net.num_stages and k + 1 < len(m.chs):
            o0 = offsets(m.chs)[k + 1]
            m.weight[o0:] += torch.rand(m.weight[o0:].shape, generator=gen)
            m.running_mean[o0:] += torch.randn(m.running_mean[o0:].shape, generator=gen)
    for j, head in enumerate(net.heads):
        assert isinstance(head, GraphHead)
        if j > k:
            for p in head.parameters():
                p += 0.5 * p.std() * torch.randn(p.shape, generator=gen)


def _counted_stage_macs(static: nn.Module, side: int) -> list[int]:
    """MACs per image of every stage of an extracted network, by torch.utils.flop_counter."""
    img, prev, out = torch.zeros(1, 3, side, side), [], []
    with torch.no_grad():
        for stage in static.stages:
            with FlopCounterMode(display=False) as counter:
                _, prev = stage(img, prev)
            out.append(counter.get_total_flops() // 2)  # conv and matmul FLOPs are 2 x MACs
    return out


@pytest.mark.parametrize("name", list(MODELS) + ["toy"])
def test_k1_equals_static(name):
    static = _static(name, 64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = static(x)
        net = from_static(static, num_stages=1, resolutions=(64,), sort=False).eval()
        out = net(x)
    assert len(out) == 1 and out[0].shape == ref.shape
    assert (out[0] - ref).abs().max().item() <= 1e-5
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        static(x[:1])
    assert net.macs(net.space.largest()) == [counter.get_total_flops() // 2]
    if "vgg" in name:
        return  # 138M parameters: float64 copies take seconds; sorting is checked on the other models
    # Importance sorting permutes channels: the same function up to the order of float sums (so: float64).
    with torch.no_grad():
        sorted64 = from_static(static, num_stages=1, resolutions=(64,), sort=True).double().eval()
        static64 = copy.deepcopy(static).double()
        assert (sorted64(x.double())[0] - static64(x.double())).abs().max().item() <= 1e-10


CASES = ["torchvision:resnet18", "torchvision:mobilenet_v2", "timm:mobilenetv2_100", "toy"]


@pytest.mark.parametrize("name", CASES)
def test_causal(name):
    static = _static(name, R)
    net = from_static(static, num_stages=3, resolutions=(R,), width_mults=(0.5, 1.0)).eval()
    net.bn_check = False  # the static network's statistics, for every subnet on purpose
    x = torch.rand(3, 3, R, R)
    gen = torch.Generator().manual_seed(3)
    for s in (net.space.largest(), net.space.sample(gen).with_all_exits()):
        net.set_subnet(s)
        for k in range(2):
            other = copy.deepcopy(net)
            _perturb_after(other, k, gen)
            for train in (False, True):  # BatchNorm with batch statistics acts per channel too
                net.train(train)
                other.train(train)
                with torch.no_grad():  # the same dropout masks in both
                    a = (torch.manual_seed(7), net(x))[1]
                    b = (torch.manual_seed(7), other(x))[1]
                for j in range(k + 1):
                    assert torch.allclose(a[j], b[j], rtol=0, atol=1e-6), (name, k, j)
                assert not torch.allclose(a[-1], b[-1])  # the perturbation reaches the last exit
            net.eval()


@pytest.mark.parametrize("name", CASES)
def test_extract_and_macs(name):
    static = _static(name, R)
    net = from_static(static, num_stages=3, resolutions=(R,), width_mults=(0.5, 0.75, 1.0)).eval()
    net.bn_check = False  # the static network's statistics, for every subnet on purpose
    x = torch.rand(2, 3, R, R)
    gen = torch.Generator().manual_seed(5)
    for s in (net.space.largest(), net.space.smallest(), net.space.sample(gen), net.space.sample(gen)):
        net.set_subnet(s)
        ex = net.extract(s)
        with torch.no_grad():
            for a, b in zip(net(x), ex(x), strict=True):  # other summation orders: relative to the logits
                assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())
        body, heads = net.stage_macs(s)
        analytic = [b + (h if on else 0) for b, h, on in zip(body, heads, s.exits)]
        assert _counted_stage_macs(ex, R) == analytic
        cumulative = [sum(analytic[:k + 1]) for k in range(3)]
        assert net.macs(s) == [c for c, on in zip(cumulative, s.exits) if on]
    assert net.macs(net.space.smallest())[-1] < net.macs(net.space.largest())[-1]


def test_k3_weights_are_static_blocks():
    static = _static("torchvision:resnet18", R)
    net = from_static(static, num_stages=3, resolutions=(R,), sort=False)
    conv = net.convs["layer2_0_conv1"]
    assert conv.out_chs == (43, 43, 42) and conv.in_chs == (22, 21, 21)
    assert torch.equal(conv.weight, static.layer2[0].conv1.weight)  # unsorted: the same tensor, masked in use
    last = net.heads[-1].layers[0]
    assert torch.equal(last.weight, static.fc.weight) and torch.equal(last.bias, static.fc.bias)
    assert torch.equal(net.heads[0].layers[0].weight, static.fc.weight[:, :171])  # exit 1 reads slice 1
    # Tied spaces share one split: every conv writing the residual stream of layer1 has the stem's slices.
    assert net.convs["conv1"].out_chs == net.convs["layer1_1_conv2"].out_chs == (22, 21, 21)


def test_space_and_subnets():
    static = _static("torchvision:mobilenet_v2", R)
    net = from_static(static, num_stages=2, resolutions=(R,), width_mults=(0.5, 0.75, 1.0))
    sp = net.space
    assert sp.num_stages == 2 and sp.resolutions == (R,) and sp.expands is None
    assert all(c[-1] == 100 for row in sp.widths for c in row)  # percent of each slice's maximum
    assert any(len(c) > 1 for row in sp.widths for c in row)  # something to search
    small = net.macs(sp.smallest())[-1]
    net.set_subnet(sp.smallest())
    with torch.no_grad():
        assert [o.shape for o in net(torch.rand(2, 3, R + 8, R + 8))] == [(2, 10), (2, 10)]  # resized inside
    with net.active(sp.largest()):
        assert net.subnet == sp.largest()
    assert net.subnet == sp.smallest() and small < net.macs(sp.largest())[-1]


def test_checkpoint_rebuild():
    static = _static("torchvision:resnet18", R)
    net = from_static(static, num_stages=3, resolutions=(R,), width_mults=(0.5, 1.0),
                      source="torchvision:resnet18")
    assert net.name == "torchvision:resnet18-s2dnas"
    sn = {"name": net.name, "num_classes": 10, "num_stages": 3, "in_chans": 3, "spec": net.spec.to_dict()}
    rebuilt = build_supernet(sn)
    assert rebuilt.space == net.space
    x = torch.rand(2, 3, R, R)
    reestimate_bn(net, [x])
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.bn_subnet == net.bn_subnet == net.space.largest()  # whose statistics: in the state dict
    with torch.no_grad():
        for a, b in zip(rebuilt.eval()(x), net.eval()(x)):
            assert torch.equal(a, b)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.conv(x)), 1), 1))


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x).transpose(2, 3)
        return self.fc(y.mean((2, 3)))


def test_errors_name_the_layer():
    with pytest.raises(TransformError, match=r"body\.0 \(Conv2d\): cannot transform a grouped convolution "
                                             r"\(groups=2.*supported: dense"):
        from_static(Grouped(), 2, resolutions=(16,))
    with pytest.raises(TransformError, match=r"the forward of Transposed: cannot transform .*transpose"):
        from_static(Transposed(), 2, resolutions=(16,))
    with pytest.raises(TransformError, match=r"num_stages=5 not allowed for this network: se_reduce \(Conv2d\) "
                                             r"has only 4 output channels.*allowed: 1\.\.4"):
        from_static(_narrow(), 5, resolutions=(16,))
    with pytest.raises(TransformError, match="kernels=.*elastic widths only"):
        from_static(Toy(), 2, kernels=(3, 5))
    with pytest.raises(TransformError, match="width_mults"):
        from_static(Toy(), 2, resolutions=(16,), width_mults=(0.0, 1.0))


def _narrow() -> nn.Module:
    m = Toy()
    m.se_reduce, m.se_expand = nn.Conv2d(15, 4, 1), nn.Conv2d(4, 15, 1)  # a 4-channel squeeze
    return m.eval()
