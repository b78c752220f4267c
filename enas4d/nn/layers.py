"""Multi-stage elastic layers: one weight tensor per layer, block-lower-triangular over slices.

Every feature map of the supernet is laid out as ``[s_1 | s_2 | ... | s_K]`` where slice ``k``
holds the *active* channels of stage ``k`` (a prefix of its maximum width). A layer with input
slice widths ``a_1..a_K`` and output slice widths ``b_1..b_K`` computes

    out_k = conv_k(concat(in_1, ..., in_k))   # W_k: (b_k, a_1+...+a_k, r_k, r_k)

The supernet's fast path evaluates all K convolutions as one convolution whose weight is the
gathered, masked full weight (the mask zeroes the upper triangle and the outer rings of smaller
kernels). :meth:`MSConv2d.stage_conv` slices out the real ``W_k`` for the static model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def offsets(widths: Sequence[int]) -> list[int]:
    """Start channel of each slice in a layout of maximum slice widths."""
    out, acc = [], 0
    for w in widths:
        out.append(acc)
        acc += w
    return out


def active_index(max_widths: Sequence[int], widths: Sequence[int]) -> list[int]:
    """Channel indices (into the max layout) of the active prefix of every slice."""
    idx: list[int] = []
    for off, w, m in zip(offsets(max_widths), widths, max_widths):
        if w > m:
            raise ValueError(f"active width {w} exceeds the slice maximum {m}")
        idx.extend(range(off, off + w))
    return idx


@dataclass
class ConvPlan:
    """What one MSConv2d computes for the active subnet (built by set_subnet, read by forward)."""

    out_idx: Tensor | None  # (O,) rows of the full weight, None = all rows in order
    in_idx: Tensor | None  # (I,) columns of the full weight, None = all columns in order
    kernel: int  # kernel side of the fused conv (max over active slices)
    mask: Tensor | None  # (O, I|1, r, r) 0/1 causal + kernel-ring mask, None = all ones


def _ring_mask(r: int, r_k: int) -> Tensor:
    """(r, r) mask keeping the centred r_k x r_k window."""
    m = torch.zeros(r, r)
    c = (r - r_k) // 2
    m[c:c + r_k, c:c + r_k] = 1
    return m


class MSConv2d(nn.Module):
    """Elastic multi-stage convolution (dense, block-lower-triangular; or depthwise, per slice).

    Args:
        in_chs: maximum input width of every slice (a single entry = an input all stages read,
            e.g. the image).
        out_chs: maximum output width of every slice.
        kernel_size: largest kernel side; smaller kernels are its centre.
        stride: spatial stride.
        depthwise: per-channel convolution (then ``in_chs == out_chs``).
        reads_from: per output slice k, the first input slice it reads (it reads slices
            ``reads_from[k]..k``: the paper's concat indicators as a contiguous range); None: all
            earlier slices (0 for every k).
    """

    def __init__(self, in_chs: Sequence[int], out_chs: Sequence[int], kernel_size: int,
                 stride: int = 1, depthwise: bool = False, reads_from: Sequence[int] | None = None):
        super().__init__()
        if depthwise and list(in_chs) != list(out_chs):
            raise ValueError("depthwise MSConv2d needs in_chs == out_chs")
        if reads_from is not None and (len(reads_from) != len(out_chs)
                                       or any(not 0 <= s <= k for k, s in enumerate(reads_from))):
            raise ValueError(f"reads_from={list(reads_from)} not allowed; allowed: one start per output slice k, "
                             f"0 <= start <= k")
        self.reads_from = tuple(reads_from) if reads_from is not None else (0,) * len(out_chs)
        self.in_chs, self.out_chs = tuple(in_chs), tuple(out_chs)
        self.kernel_size, self.stride, self.depthwise = kernel_size, stride, depthwise
        cin = 1 if depthwise else sum(in_chs)
        self.weight = nn.Parameter(torch.empty(sum(out_chs), cin, kernel_size, kernel_size))
        # Kaiming-normal (fan-out) as in timm/torchvision for conv layers followed by BN.
        fan_out = kernel_size * kernel_size * (1 if depthwise else sum(out_chs))
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def _reads(self, k: int) -> range:
        """Input slices that output slice k reads (slices ``reads_from[k]..k``; the single shared input)."""
        if len(self.in_chs) == 1:
            return range(1)
        return range(self.reads_from[k], k + 1)

    def read_offset(self, k: int, in_w: Sequence[int]) -> int:
        """Channels of the compact input ``[s_1 | ... | s_k]`` before the first slice output slice k reads."""
        return sum(in_w[j] for j in range(self._reads(k).start))

    def plan(self, in_w: Sequence[int], out_w: Sequence[int], kernels: Sequence[int]) -> ConvPlan:
        """Index and mask tensors for active slice widths ``in_w``/``out_w`` and per-slice kernels.

        A slice with ``out_w[k] == 0`` is not computed (inactive at this depth).
        """
        K = len(self.out_chs)
        act = [k for k in range(K) if out_w[k] > 0]
        r = max(kernels[k] for k in act)
        out_idx = active_index(self.out_chs, out_w)
        if self.depthwise:
            in_idx = out_idx
            mask = None
            if any(kernels[k] != r for k in act):
                mask = torch.cat([_ring_mask(r, kernels[k]).expand(out_w[k], 1, r, r) for k in act])
        else:
            in_idx = active_index(self.in_chs, in_w)
            rows = []
            for k in act:
                ring = _ring_mask(r, kernels[k])
                cols = [(ring if j in self._reads(k) else torch.zeros(r, r)).expand(in_w[j], r, r)
                        for j in range(len(self.in_chs))]
                rows.append(torch.cat(cols).unsqueeze(0).expand(out_w[k], -1, -1, -1))
            mask = torch.cat(rows)
            if bool(mask.all()):
                mask = None
        full_out = len(out_idx) == self.weight.shape[0]
        full_in = self.depthwise or len(in_idx) == sum(self.in_chs)
        dev = self.weight.device
        return ConvPlan(
            out_idx=None if full_out else torch.tensor(out_idx, dtype=torch.long, device=dev),
            in_idx=None if full_in else torch.tensor(in_idx, dtype=torch.long, device=dev),
            kernel=r,
            mask=None if mask is None else mask.contiguous().to(dev),
        )

    def forward(self, x: Tensor, plan: ConvPlan) -> Tensor:
        """Fused conv of all active slices: x (N, sum a_j, H, W) -> (N, sum b_k, H', W')."""
        w = self.weight
        if plan.out_idx is not None:
            w = w.index_select(0, plan.out_idx)
        if plan.in_idx is not None and not self.depthwise:
            w = w.index_select(1, plan.in_idx)
        if plan.kernel != self.kernel_size:
            c = (self.kernel_size - plan.kernel) // 2
            w = w[:, :, c:c + plan.kernel, c:c + plan.kernel]
        if plan.mask is not None:
            w = w * plan.mask
        groups = w.shape[0] if self.depthwise else 1
        return F.conv2d(x, w, None, self.stride, plan.kernel // 2, 1, groups)

    def stage_conv(self, k: int, in_w: Sequence[int], out_w: Sequence[int], kernel: int) -> nn.Conv2d:
        """The real convolution of slice k: (out_w[k], sum of read in_w, kernel, kernel)."""
        rows = active_index(self.out_chs, [out_w[j] if j == k else 0 for j in range(len(self.out_chs))])
        c = (self.kernel_size - kernel) // 2
        w = self.weight.detach()[rows][:, :, c:c + kernel, c:c + kernel]
        if self.depthwise:
            conv = nn.Conv2d(len(rows), len(rows), kernel, self.stride, kernel // 2, groups=len(rows), bias=False)
        else:
            reads = [in_w[j] if j in self._reads(k) else 0 for j in range(len(self.in_chs))]
            w = w[:, active_index(self.in_chs, reads)]
            conv = nn.Conv2d(w.shape[1], len(rows), kernel, self.stride, kernel // 2, bias=False)
        conv.weight.data.copy_(w)
        return conv

    def macs(self, k: int, in_w: Sequence[int], out_w: Sequence[int], kernel: int, out_hw: int) -> int:
        """Analytic MACs per image of slice k's convolution at output side ``out_hw``."""
        if out_w[k] == 0:
            return 0
        fan_in = 1 if self.depthwise else sum(in_w[j] for j in self._reads(k))
        return out_w[k] * fan_in * kernel * kernel * out_hw * out_hw


class MSBatchNorm2d(nn.Module):
    """BatchNorm over the active channels (per channel, hence per slice).

    In training mode it normalises with batch statistics and does not track running statistics:
    a supernet's running statistics mean nothing for any one subnet, so evaluation first
    re-estimates them (:func:`enas4d.nn.bn.reestimate_bn`).
    """

    def __init__(self, chs: Sequence[int], eps: float = 1e-5):
        super().__init__()
        self.chs, self.eps = tuple(chs), eps
        n = sum(chs)
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: Tensor, idx: Tensor | None) -> Tensor:
        """x (N, C_active, H, W); ``idx`` the active channels (None = all, in order)."""
        w, b, rm, rv = self.weight, self.bias, self.running_mean, self.running_var
        if idx is not None:
            w, b, rm, rv = w[idx], b[idx], rm[idx], rv[idx]
        if self.training:
            return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)
        return F.batch_norm(x, rm, rv, w, b, False, 0.0, self.eps)

    def stage_bn(self, k: int, widths: Sequence[int]) -> nn.BatchNorm2d:
        """A plain BatchNorm2d for slice k's active channels (eval statistics copied)."""
        rows = active_index(self.chs, [widths[j] if j == k else 0 for j in range(len(self.chs))])
        bn = nn.BatchNorm2d(len(rows), eps=self.eps)
        with torch.no_grad():
            bn.weight.copy_(self.weight[rows])
            bn.bias.copy_(self.bias[rows])
            bn.running_mean.copy_(self.running_mean[rows])
            bn.running_var.copy_(self.running_var[rows])
        return bn


def make_act(name: str) -> nn.Module:
    """Activation module by name ('relu', 'hswish', 'none')."""
    acts = {"relu": nn.ReLU, "hswish": nn.Hardswish, "none": nn.Identity}
    if name not in acts:
        raise ValueError(f"act: unknown activation {name!r}; allowed: {sorted(acts)}")
    return acts[name]() if name == "none" else acts[name](inplace=False)
