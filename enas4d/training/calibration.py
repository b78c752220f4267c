"""BatchNorm calibration of one subnet on a fixed, cached subset of the training split.

The supernet's BatchNorm keeps no running statistics while training (they would mix every
subnet), so a subnet is evaluated only after :func:`enas4d.nn.bn.recalibrate_bn` re-estimated them
for it. Training's validation and the search both go through :class:`CalibrationSet`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.bn import recalibrate_bn
from enas4d.nn.layers import MSBatchNorm2d
from enas4d.space import Subnet

__all__ = ["CalibrationSet", "bn_buffers", "evaluate_exits", "load_bn_buffers"]


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
