"""Test helpers for supernets: realistic BatchNorm state and slice-wise perturbation."""

from __future__ import annotations

import torch

from enas4d.models.supernet import ExitHead, MultiStageSupernet
from enas4d.nn.layers import MSBatchNorm2d, MSConv2d, offsets


@torch.no_grad()
def randomize_bn(net: MultiStageSupernet, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics, which the tests
    use for every subnet on purpose (so the check of whose statistics they are is switched off)."""
    net.bn_check = False
    for m in net.modules():
        if isinstance(m, MSBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


@torch.no_grad()
def perturb_after(net: MultiStageSupernet, k: int, gen: torch.Generator) -> None:
    """Add noise to every weight that belongs to slices > k: their rows, and the columns of
    slices > k in the rows of slices <= k (which the causal mask must hide), and heads > k."""
    for m in net.modules():
        if isinstance(m, MSConv2d):
            scale = 0.5 * m.weight.std()  # large enough to matter, small enough not to overflow
            oo, io = offsets(m.out_chs), offsets(m.in_chs)
            for j, (o0, ow) in enumerate(zip(oo, m.out_chs)):
                if m.depthwise:
                    if j > k:
                        m.weight[o0:o0 + ow] += scale * torch.randn(m.weight[o0:o0 + ow].shape, generator=gen)
                    continue
                for i, (i0, iw) in enumerate(zip(io, m.in_chs)):
                    if j > k or i > k:
                        blk = m.weight[o0:o0 + ow, i0:i0 + iw]
                        blk += scale * torch.randn(blk.shape, generator=gen)
        elif isinstance(m, MSBatchNorm2d) and len(m.chs) == net.num_stages:
            o0 = offsets(m.chs)[k + 1] if k + 1 < len(m.chs) else m.weight.numel()
            m.weight[o0:] += torch.rand(m.weight[o0:].shape, generator=gen)
            m.running_mean[o0:] += torch.randn(m.running_mean[o0:].shape, generator=gen)
    for head in net.heads:
        assert isinstance(head, ExitHead)
        if head.k > k:
            for p in head.parameters():
                p += 0.5 * p.std() * torch.randn(p.shape, generator=gen)
