"""BatchNorm re-estimation for one subnet (exact pooled statistics over a calibration set).

The supernet's BatchNorm keeps no running statistics while training (they would mix every
subnet), so a subnet is evaluated only after :func:`recalibrate_bn` re-estimated them for it, on a
:class:`CalibrationSet` (a fixed, cached subset of the training split). Training's validation, the
search and the export all go through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import Tensor, nn

from enas4d.nn.layers import MSBatchNorm2d
from enas4d.space import Subnet

if TYPE_CHECKING:
    from enas4d.models.supernet import MultiStageSupernet

__all__ = ["CalibrationSet", "bn_buffers", "evaluate_exits", "load_bn_buffers", "recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]]) -> int:
    """Re-estimate the running statistics of every MSBatchNorm2d for the active subnet.

    Runs ``net`` in training mode (each BN normalises with its batch's statistics, as in training)
    over ``batches`` (tensors, or ``(x, y)`` pairs of which ``x`` is used) and writes the exact
    mean and unbiased variance pooled over all images into the running buffers of the active
    channels. Returns the number of images seen. The module's train/eval mode is restored.
    """
    stats: dict[MSBatchNorm2d, list] = {}

    def hook(mod: MSBatchNorm2d, inputs: tuple, _out: Tensor) -> None:
        x, idx = inputs
        x64 = x.detach().to(torch.float64)
        n = x64.shape[0] * x64.shape[2] * x64.shape[3]
        s, sq = x64.sum((0, 2, 3)), (x64 * x64).sum((0, 2, 3))
        if mod in stats:
            acc = stats[mod]
            acc[0] += s
            acc[1] += sq
            acc[2] += n
        else:
            stats[mod] = [s, sq, n, idx]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, MSBatchNorm2d)]
    was_training = net.training
    seen = 0
    try:
        net.train()
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(next(net.parameters()).device)
            net(x)
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_bn: the calibration set is empty")
    for mod, (s, sq, n, idx) in stats.items():
        mean = s / n
        var = (sq / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
        if idx is None:
            mod.running_mean.copy_(mean)
            mod.running_var.copy_(var)
        else:
            mod.running_mean.index_copy_(0, idx, mean.to(mod.running_mean.dtype))
            mod.running_var.index_copy_(0, idx, var.to(mod.running_var.dtype))
    return seen


class CalibrationSet:
    """Image batches held in memory (on CPU) for BatchNorm re-estimation.

    Build it once from ``datamodule.calibration_dataloader(num_images)`` (a fixed subset of the
    training split without augmentation); every :meth:`calibrate` then sees the same images.
    """

    def __init__(self, batches: Iterable[Tensor | Sequence[Tensor]]):
        self.batches: list[Tensor] = []  # each (B, C, H, W) float, normalised
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.batches.append(x.detach().cpu())
        if not self.batches:
            raise ValueError("calibration set: the calibration dataloader yielded no batches")

    @property
    def num_images(self) -> int:
        """Images held."""
        return sum(b.shape[0] for b in self.batches)

    def calibrate(self, net: MultiStageSupernet, subnet: Subnet) -> None:
        """Make ``subnet`` active in ``net`` and re-estimate its BatchNorm statistics here."""
        net.set_subnet(subnet)
        recalibrate_bn(net, self.batches)


def bn_buffers(net: MultiStageSupernet) -> list[tuple[Tensor, Tensor]]:
    """Copies of every MSBatchNorm2d's (running_mean, running_var), in module order."""
    return [(m.running_mean.clone(), m.running_var.clone()) for m in net.modules() if isinstance(m, MSBatchNorm2d)]


@torch.no_grad()
def load_bn_buffers(net: MultiStageSupernet, buffers: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Write back statistics saved by :func:`bn_buffers` (same network)."""
    mods = [m for m in net.modules() if isinstance(m, MSBatchNorm2d)]
    if len(mods) != len(buffers):
        raise ValueError(f"load_bn_buffers: {len(buffers)} saved entries for {len(mods)} BatchNorm layers")
    for m, (mean, var) in zip(mods, buffers):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


@torch.no_grad()
def evaluate_exits(net: MultiStageSupernet, subnet: Subnet, calibration: CalibrationSet,
                   batches: Iterable[Sequence[Tensor]]) -> list[float]:
    """Top-1 accuracy of every exit of ``subnet`` (all exits enabled) after BN calibration.

    ``batches`` yields ``(x, y)``; the network runs in eval mode on its own device and is left
    with ``subnet`` active and calibrated.
    """
    s = subnet.with_all_exits()
    calibration.calibrate(net, s)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    correct, seen = torch.zeros(net.num_stages, dtype=torch.long), 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            for k, logits in enumerate(net(x)):
                correct[k] += int((logits.argmax(1) == y).sum())
            seen += y.shape[0]
    finally:
        net.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_exits: no evaluation batches")
    return (correct.double() / seen).tolist()
