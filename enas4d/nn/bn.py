"""BatchNorm re-estimation for one subnet (exact pooled statistics over a calibration set)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from enas4d.nn.layers import MSBatchNorm2d


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
