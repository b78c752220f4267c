"""Multi-stage elastic blocks: inverted residual (MBConv) and ResNet basic block.

Each block knows, from a :class:`BlockCfg` (active widths per slice), how to compute all slices at
once (``forward`` with a plan), its analytic MACs per slice, and the static ops of one slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from enas4d.models import static as st
from enas4d.nn.layers import ConvPlan, MSBatchNorm2d, MSConv2d, make_act


@dataclass(frozen=True)
class BlockCfg:
    """Active shape of one block for one subnet; lists are per slice k."""

    in_chs: tuple[int, ...]  # input widths
    mid_chs: tuple[int, ...]  # hidden widths (0 where the slice is inactive)
    out_chs: tuple[int, ...]  # output widths of computed slices (0 where inactive: it passes through)
    kernel_size: tuple[int, ...]  # kernel sizes
    hw_in: int  # input side in pixels

    @property
    def active(self) -> tuple[bool, ...]:
        """Slices this block computes."""
        return tuple(w > 0 for w in self.out_chs)


@dataclass
class BlockPlan:
    """Index/mask tensors of a block for the active subnet."""

    convs: list[ConvPlan]  # in the block's conv order
    shortcut: ConvPlan | None  # projection shortcut
    res_idx: Tensor | None  # compact channels of x the residual adds to (None: all, or no residual)


def _residual_index(cfg: BlockCfg, device: torch.device) -> Tensor | None:
    """Compact input channels of the computed slices (None when every slice is computed), on ``device``."""
    if all(cfg.active):
        return None
    idx, start = [], 0
    for a, on in zip(cfg.in_chs, cfg.active):
        if on:
            idx.extend(range(start, start + a))
        start += a
    return torch.tensor(idx, dtype=torch.long, device=device)


def _out_hw(hw: int, stride: int) -> int:
    """Output side of a 'same'-padded conv with an odd kernel."""
    return (hw - 1) // stride + 1


class MSBlock(nn.Module):
    """Shared logic: a chain of (conv, bn, act), an optional shortcut, residual and final act."""

    identity_residual: bool  # x + f(x) (in and out widths are the same gene)

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.sc_conv: MSConv2d | None = None
        self.sc_bn: MSBatchNorm2d | None = None
        self.out_act: nn.Module = nn.Identity()

    # Per conv: (in widths, out widths, kernels) for a cfg. Subclasses define the chain.
    def _conv_shapes(self, cfg: BlockCfg) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        raise NotImplementedError

    def plan(self, cfg: BlockCfg) -> BlockPlan:
        """Plans of every conv for this cfg, built on the block's device."""
        convs = [conv.plan(i, o, r) for conv, (i, o, r) in zip(self.convs, self._conv_shapes(cfg))]
        sc = None
        if self.sc_conv is not None:
            sc = self.sc_conv.plan(cfg.in_chs, cfg.out_chs, (1,) * len(cfg.out_chs))
        res = _residual_index(cfg, self.convs[0].weight.device) if self.identity_residual else None
        return BlockPlan(convs, sc, res)

    def forward(self, x: Tensor, p: BlockPlan) -> Tensor:
        """x (N, sum a, H, W) -> (N, sum a', H', W'); inactive slices pass through."""
        y = x
        for conv, bn, act, cp in zip(self.convs, self.bns, self.acts, p.convs):
            y = act(bn(conv(y, cp), cp.out_idx))
        if self.sc_conv is not None:
            y = y + self.sc_bn(self.sc_conv(x, p.shortcut), p.shortcut.out_idx)
        elif self.identity_residual:
            y = x + y if p.res_idx is None else x.index_add(1, p.res_idx, y)
        return self.out_act(y)

    def macs(self, cfg: BlockCfg) -> list[int]:
        """Analytic MACs per image of every slice of this block."""
        K = len(cfg.out_chs)
        out = [0] * K
        hw = cfg.hw_in
        for conv, (i, o, r) in zip(self.convs, self._conv_shapes(cfg)):
            hw = _out_hw(hw, conv.stride)
            for k in range(K):
                out[k] += conv.macs(k, i, o, r[k], hw)
        if self.sc_conv is not None:
            hw_sc = _out_hw(cfg.hw_in, self.sc_conv.stride)
            for k in range(K):
                out[k] += self.sc_conv.macs(k, cfg.in_chs, cfg.out_chs, 1, hw_sc)
        return out

    def out_hw(self, hw_in: int) -> int:
        """Output side for input side ``hw_in``."""
        return _out_hw(hw_in, self.stride)

    def stage_layers(self, cfg: BlockCfg, k: int) -> list[st.ConvBNAct]:
        """Static conv-BN-act layers of slice k, in chain order."""
        layers = []
        for conv, bn, act, (i, o, r) in zip(self.convs, self.bns, self.acts, self._conv_shapes(cfg)):
            layers.append(st.ConvBNAct(conv.stage_conv(k, i, o, r[k]), bn.stage_bn(k, o), type(act)()))
        return layers

    def stage_ops(self, cfg: BlockCfg, k: int, in_pos: int, hid_pos: int,
                  prev_hid: int, prev_out: int, own_only: bool = False) -> tuple[nn.Module | None, nn.Module]:
        """Static ops of slice k: (op for the hidden tap or None if inactive, op for the out tap).

        ``in_pos``/``hid_pos``: positions of this block's input and hidden taps in stage k's list;
        ``prev_hid``/``prev_out``: positions of those taps in the earlier stages' list (-1: none).
        ``own_only``: stage k's taps hold its own slice only (it reads no earlier slice).
        """
        if not cfg.active[k]:
            return None, st.PassOp(in_pos, prev_out, cfg.in_chs[k])
        layers = self.stage_layers(cfg, k)
        shapes = self._conv_shapes(cfg)

        def offset(conv: MSConv2d, in_w: tuple[int, ...]) -> int:
            return 0 if own_only else conv.read_offset(k, in_w)

        hid = st.SeqOp(nn.Sequential(*layers[:-1]), in_pos, prev_hid, offset(self.convs[0], shapes[0][0]))
        shortcut: nn.Module = nn.Identity()
        res_pos, res_width, res_off = -1, 0, 0
        if self.sc_conv is not None:
            conv = self.sc_conv.stage_conv(k, cfg.in_chs, cfg.out_chs, 1)
            shortcut = st.ConvBNAct(conv, self.sc_bn.stage_bn(k, cfg.out_chs), nn.Identity())
            res_pos, res_off = in_pos, offset(self.sc_conv, cfg.in_chs)
        elif self.identity_residual:
            res_pos, res_width = in_pos, cfg.in_chs[k]
        out = st.ResidualOp(layers[-1], hid_pos, prev_out, res_pos, res_width, shortcut,
                            type(self.out_act)(), offset(self.convs[-1], shapes[-1][0]), res_off)
        return hid, out


class MBBlock(MSBlock):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity)."""

    def __init__(self, in_chs: tuple[int, ...], out_chs: tuple[int, ...], max_expand: int,
                 max_kernel: int, stride: int, act: str, residual: bool,
                 reads_from: tuple[int, ...] | None = None):
        super().__init__(stride)
        hid = tuple(max_expand * a for a in in_chs)
        self.convs.extend([MSConv2d(in_chs, hid, 1, reads_from=reads_from),
                           MSConv2d(hid, hid, max_kernel, stride, depthwise=True),
                           MSConv2d(hid, out_chs, 1, reads_from=reads_from)])
        self.bns.extend([MSBatchNorm2d(hid), MSBatchNorm2d(hid), MSBatchNorm2d(out_chs)])
        self.acts.extend([make_act(act), make_act(act), nn.Identity()])
        self.identity_residual = residual

    def _conv_shapes(self, cfg):
        K = len(cfg.out_chs)
        ones = (1,) * K
        return [(cfg.in_chs, cfg.mid_chs, ones), (cfg.mid_chs, cfg.mid_chs, cfg.kernel_size), (cfg.mid_chs, cfg.out_chs, ones)]


class BasicBlock(MSBlock):
    """ResNet basic block: kxk conv -> kxk conv, + identity or 1x1 projection, then ReLU."""

    def __init__(self, in_chs: tuple[int, ...], out_chs: tuple[int, ...], max_kernel: int, stride: int,
                 act: str, residual: bool, reads_from: tuple[int, ...] | None = None):
        super().__init__(stride)
        self.convs.extend([MSConv2d(in_chs, out_chs, max_kernel, stride, reads_from=reads_from),
                           MSConv2d(out_chs, out_chs, max_kernel, reads_from=reads_from)])
        self.bns.extend([MSBatchNorm2d(out_chs), MSBatchNorm2d(out_chs)])
        self.acts.extend([make_act(act), nn.Identity()])
        self.out_act = make_act(act)
        self.identity_residual = residual
        if not residual:
            self.sc_conv = MSConv2d(in_chs, out_chs, 1, stride, reads_from=reads_from)
            self.sc_bn = MSBatchNorm2d(out_chs)

    def _conv_shapes(self, cfg):
        return [(cfg.in_chs, cfg.mid_chs, cfg.kernel_size), (cfg.mid_chs, cfg.out_chs, cfg.kernel_size)]
