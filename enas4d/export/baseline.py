"""The plain static network of a family: what a user would deploy instead of an early-exit model.

:func:`plain_network` builds, from a family's :class:`~enas4d.models.supernet.NetSpec`, the
ordinary single-exit CNN of its largest shape (for ``resnet_cifar`` with 3x3 kernels: ResNet-20)
out of plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` layers, with the same input contract as an exported
model ([0, 1] images, resized and normalised inside). Benchmarks and ``enas4d-evaluate`` time an
export against it (random weights: only its speed matters), so that a speed-up is measured against
the network a user would otherwise run, not only against the same multi-stage model.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import enas4d
from enas4d.export.early_exit import Preprocess, activations_in_place, fold_batchnorm, has_depthwise
from enas4d.models import static as st
from enas4d.models.spec import NetSpec, slice_widths
from enas4d.nn.layers import make_act

__all__ = ["PlainNet", "Reference", "count_macs", "family_spec", "plain_for", "plain_network", "plain_reference"]


class Residual(nn.Module):
    """act(body(x) + shortcut(x)); without a shortcut act(body(x))."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None, act: nn.Module):
        super().__init__()
        self.body, self.act = body, act
        self.has_shortcut = shortcut is not None
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        y = self.body(x)
        if self.has_shortcut:
            y = y + self.shortcut(x)
        return self.act(y)


class PlainNet(nn.Module):
    """A single-exit CNN taking [0, 1] images: preprocess -> features -> head -> (N, classes) logits.

    It runs batches of at least ``channels_last_min_batch`` images channels-last (0: never), the
    layout rule of :class:`~enas4d.export.early_exit.EarlyExitNet`, so that a comparison of the two
    compares networks, not memory layouts.
    """

    def __init__(self, preprocess: Preprocess, features: nn.Sequential, head: st.Head, channels_last_min_batch: int):
        super().__init__()
        self.preprocess, self.features, self.head = preprocess, features, head
        self.channels_last_min_batch = channels_last_min_batch

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, num_classes)."""
        x = self.preprocess(x)
        if self.channels_last_min_batch > 0 and x.shape[0] >= self.channels_last_min_batch:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


def _cba(in_chs: int, out_chs: int, kernel_size: int, stride: int, act: nn.Module, groups: int = 1) -> st.ConvBNAct:
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
    return st.ConvBNAct(conv, nn.BatchNorm2d(out_chs), act)


def plain_network(spec: NetSpec, num_classes: int, in_chans: int = 3, resolution: int | None = None,
                  kernel: int | None = None, expand: int | None = None,
                  mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                  channels_last_min_batch: int | None = None) -> PlainNet:
    """The plain network of ``spec``'s largest shape (eval mode, BatchNorm not folded).

    Args:
        spec: the family's table.
        num_classes: classifier outputs.
        in_chans: input channels (``mean``/``std`` give one value per channel).
        resolution: input side (default: the family's largest).
        kernel: spatial kernel of every block (default: the family's smallest, e.g. 3 for ResNet-20).
        expand: expand ratio of MBConv blocks (default: the family's largest).
        channels_last_min_batch: see :class:`PlainNet` (None: the early-exit model's default rule).
    """
    kernel = min(spec.kernels) if kernel is None else kernel
    if kernel not in spec.kernels:
        raise ValueError(f"kernel: {kernel} not allowed; allowed values: {list(spec.kernels)}")
    if spec.expands is not None:
        expand = max(spec.expands) if expand is None else expand
        if expand not in spec.expands:
            raise ValueError(f"expand: {expand} not allowed; allowed values: {list(spec.expands)}")
    resolution = max(spec.resolutions) if resolution is None else resolution
    layers: list[nn.Module] = [_cba(in_chans, spec.groups[0].width, 3, spec.stem_stride, make_act(spec.stem_act))]
    prev = spec.groups[0].width
    for g, gs in enumerate(spec.groups):
        for b in range(gs.depth):
            stride = gs.stride if b == 0 else 1
            a, o = (prev if b == 0 else gs.width), gs.width
            residual = b > 0 or (g == 0 and stride == 1)  # the supernet's rule (identity where widths match)
            if spec.block == "basic":
                body = nn.Sequential(_cba(a, o, kernel, stride, make_act(gs.act)),
                                     _cba(o, o, kernel, 1, nn.Identity()))
                shortcut: nn.Module = nn.Identity() if residual else _cba(a, o, 1, stride, nn.Identity())
                layers.append(Residual(body, shortcut, make_act(gs.act)))
            else:
                h = expand * a
                body = nn.Sequential(_cba(a, h, 1, 1, make_act(gs.act)),
                                     _cba(h, h, kernel, stride, make_act(gs.act), groups=h),
                                     _cba(h, o, 1, 1, nn.Identity()))
                layers.append(Residual(body, nn.Identity() if residual else None, nn.Identity()))
        prev = gs.width
    pre: nn.Module = nn.Identity()
    hidden: nn.Module = nn.Identity()
    feat = prev
    if spec.head_conv:
        pre, feat = _cba(feat, spec.head_conv, 1, 1, make_act(spec.head_act)), spec.head_conv
    if spec.head_hidden:
        hidden, feat = nn.Sequential(nn.Linear(feat, spec.head_hidden), make_act(spec.head_act)), spec.head_hidden
    head = st.Head(pre, hidden, nn.Linear(feat, num_classes))
    features = nn.Sequential(*layers)
    if channels_last_min_batch is None:
        channels_last_min_batch = 1 if has_depthwise(features) else 2
    return PlainNet(Preprocess(mean, std, resolution), features, head, channels_last_min_batch).eval()


@torch.no_grad()
def reestimate_bn_plain(net: PlainNet, images: Tensor) -> PlainNet:
    """Give every BatchNorm the statistics of ``images`` (so activations have a realistic scale)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass sets the batch's statistics
    net.train()
    net(images)
    return net.eval()


def family_spec(supernet: dict[str, Any]) -> NetSpec | None:
    """The NetSpec of a checkpoint's or export's ``supernet`` entry: its stored spec, else its
    registered name's; None for a network transformed from a torchvision/timm graph. A supernet
    grown around a static network (S2DNAS grow: a last stage that reads only its own slice) gives
    that static network's spec: the plain network a user would deploy instead."""
    spec = supernet.get("spec")
    if isinstance(spec, dict):
        return None if spec.get("kind") == "graph" else _grown_from(NetSpec.from_dict(spec))
    name = supernet.get("name")
    if name in enas4d.list_supernets():
        return enas4d.create_supernet(name, num_classes=1, num_stages=1, in_chans=supernet.get("in_chans", 3)).spec
    return None


def _grown_from(spec: NetSpec) -> NetSpec:
    """The spec of the static network a grown spec's last slice holds (other specs unchanged)."""
    reads = spec.reads_from
    if reads is None or len(reads) < 2 or reads[-1] != len(reads) - 1:
        return spec
    last = [w[-1] for w in slice_widths(spec, len(reads))]
    groups = tuple(dataclasses.replace(g, width=w) for g, w in zip(spec.groups, last))
    return dataclasses.replace(spec, groups=groups, slice_fracs=None, reads_from=None)


def plain_for(spec: NetSpec, num_classes: int, in_chans: int = 3, fold_bn: bool = True, seed: int = 0) -> PlainNet:
    """The plain network of ``spec`` with random weights and BatchNorm statistics re-estimated on random images
    (folded, as an export's), activations in place: ready to time like an exported model."""
    torch.manual_seed(seed)
    net = plain_network(spec, num_classes, in_chans, mean=(0.5,) * in_chans, std=(0.25,) * in_chans)
    side = net.preprocess.resolution
    reestimate_bn_plain(net, torch.rand(16, in_chans, side, side, generator=torch.Generator().manual_seed(seed)))
    if fold_bn:
        fold_batchnorm(net)
    activations_in_place(net)  # as the exported models do
    for m in net.modules():  # the residual sums are fresh tensors too
        if isinstance(m, Residual) and isinstance(m.act, (nn.ReLU, nn.Hardswish)):
            m.act.inplace = True
    return net.requires_grad_(False)


@torch.no_grad()
def count_macs(model: nn.Module, in_chans: int, side: int) -> int:
    """MACs per image of ``model`` on one (1, C, side, side) input, by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_chans, side, side))
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Reference:
    """A plain static network ready to be timed next to an export."""

    name: str  # what it is, for reports
    macs: int  # MACs per image (torch.utils.flop_counter)
    run: Callable[[Tensor], Any]  # x (N, C, H, W) in [0, 1] -> its logits


def plain_reference(spec: NetSpec, family: str, num_classes: int, in_chans: int, backend: str,
                    threads: int | None = None, device: torch.device | str = "cpu",
                    providers: Sequence[Any] | None = None) -> Reference:
    """The plain network of ``spec`` (random weights) on ``backend``: TorchScript (scripted and
    reloaded, as model.ts) on ``device``, onnxruntime (one graph, like the export's ONNX stages)
    with ``providers`` (default: the CPU), or torch.export programs run as ``pt2_runner.py`` runs the
    export's (CPU). Its ``run`` takes CPU images, as the export's predict does."""
    from enas4d.export import jit  # local: keeps the module light for the benchmarks that only build

    net = plain_for(spec, num_classes, in_chans)
    side = net.preprocess.resolution
    macs = count_macs(net, in_chans, side)
    name = f"plain {family} (largest shape, {min(spec.kernels)}x{min(spec.kernels)} kernels, {side}x{side})"
    if backend == "torchscript":
        scripted = jit.roundtrip(net).to(device)
        return Reference(name, macs, lambda x: scripted(x.to(device)).cpu())  # no-ops on the CPU
    if backend == "pt2":
        return Reference(name, macs, _pt2_plain(net, in_chans, side))
    if backend != "onnx":
        raise ValueError(f"backend: {backend!r} not allowed; allowed values: ['onnx', 'pt2', 'torchscript']")
    import onnxruntime as ort

    from enas4d.export.onnx_export import export_graph

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.onnx"
        x = torch.rand(2, in_chans, side + 3, side + 3)  # another side: the graph keeps its Resize
        export_graph(net, (x,), path, ["x"], ["logits"], {"x": {0: "batch", 2: "height", 3: "width"},
                                                           "logits": {0: "batch"}}, 17)
        sess = ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
    return Reference(name, macs, lambda x: sess.run(None, {"x": x.numpy()}))


def _pt2_plain(net: PlainNet, in_chans: int, side: int) -> Callable[[Tensor], Tensor]:
    """``net`` as two torch.export programs, preprocess and body, with the channels-last rule between
    them (as ``pt2_runner.py`` runs an export's preprocess and stages): x (N, C, H, W) -> logits."""
    from torch.export import Dim

    from enas4d.export.pt2_export import ResizedPreprocess

    batch = Dim("batch", min=1)
    x = torch.rand(2, in_chans, side + 3, side + 3)
    pre = torch.export.export(ResizedPreprocess(net.preprocess), (x,), dynamic_shapes={
        "x": {0: batch, 2: Dim("height", min=1), 3: Dim("width", min=1)}}).module()
    body = torch.export.export(nn.Sequential(net.features, net.head), (net.preprocess(x),),
                               dynamic_shapes={"input": {0: batch}}).module()
    min_batch = net.channels_last_min_batch

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            img = pre(x)
            if 0 < min_batch <= img.shape[0]:
                img = img.contiguous(memory_format=torch.channels_last)
            return body(img)

    return run
