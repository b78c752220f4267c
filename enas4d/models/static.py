"""The extracted (static) multi-stage network: plain torch modules of real shapes.

Stage ``k`` is a :class:`StaticStage`: a list of *tap ops*, one per feature map ("tap") that
stage ``k`` or a later one reads, in network order. Every tap holds the concatenation of the slices
computed so far, ``[s_1 | ... | s_k]``. Stage ``k`` receives the taps stages ``< k`` produced
(``prev``), appends its own slice to each, and returns them for stage ``k+1``; nothing earlier
stages computed is computed again (design.md section 3, "no recomputation").

All modules here are TorchScript-compatible and import nothing from the rest of enas4d, so a
scripted model runs without the package.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def join(prev: List[Tensor], pos: int, own: Tensor) -> Tensor:
    """Append a stage's own slice to the tap earlier stages built (``pos < 0``: none yet)."""
    if pos < 0:
        return own
    return torch.cat([prev[pos], own], 1)


class ConvBNAct(nn.Module):
    """conv -> BatchNorm (or Identity once folded) -> activation."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        return self.act(self.bn(self.conv(x)))


class StemOp(nn.Module):
    """Own slice of the stem: reads the image."""

    def __init__(self, f: ConvBNAct, prev_pos: int):
        super().__init__()
        self.f, self.prev_pos = f, prev_pos

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | f(img)]."""
        return join(prev, self.prev_pos, self.f(img))


class SeqOp(nn.Module):
    """Own slice = a chain of conv-BN-act layers applied to one tap of this stage."""

    def __init__(self, layers: nn.Sequential, src_pos: int, prev_pos: int):
        super().__init__()
        self.layers, self.src_pos, self.prev_pos = layers, src_pos, prev_pos

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | layers(cur[src])]."""
        return join(prev, self.prev_pos, self.layers(cur[self.src_pos]))


class ResidualOp(nn.Module):
    """Own slice = act(body(cur[src]) + shortcut), the shortcut being the own slice of another
    tap (identity), a conv-BN of that whole tap (projection), or nothing."""

    def __init__(self, body: nn.Module, src_pos: int, prev_pos: int, res_pos: int, res_width: int,
                 shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.body, self.src_pos, self.prev_pos = body, src_pos, prev_pos
        self.res_pos, self.res_width = res_pos, res_width  # res_width > 0: identity of own slice
        self.shortcut, self.act = shortcut, act

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | act(body + shortcut)]."""
        y = self.body(cur[self.src_pos])
        if self.res_pos >= 0:
            r = cur[self.res_pos]
            if self.res_width > 0:
                y = y + r[:, r.shape[1] - self.res_width:]
            else:
                y = y + self.shortcut(r)
        return join(prev, self.prev_pos, self.act(y))


class PassOp(nn.Module):
    """Own slice passes through unchanged (the slice's depth ends before this block)."""

    def __init__(self, src_pos: int, prev_pos: int, width: int):
        super().__init__()
        self.src_pos, self.prev_pos, self.width = src_pos, prev_pos, width

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | own slice of cur[src]]."""
        x = cur[self.src_pos]
        return join(prev, self.prev_pos, x[:, x.shape[1] - self.width:])


class KeepOp(nn.Module):
    """A tap this stage does not extend but a later stage reads: handed on unchanged."""

    def __init__(self, prev_pos: int):
        super().__init__()
        self.prev_pos = prev_pos

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = the earlier stages' tap."""
        return prev[self.prev_pos]


class Head(nn.Module):
    """Exit head: [conv-BN-act] -> global average pool -> [linear -> act] -> linear."""

    def __init__(self, pre: nn.Module, hidden: nn.Module, classifier: nn.Linear):
        super().__init__()
        self.pre, self.hidden, self.classifier = pre, hidden, classifier

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) features of slices 1..k -> (N, num_classes) logits."""
        x = self.pre(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.hidden(x))


class NoHead(nn.Module):
    """Placeholder where an exit is disabled: computes nothing."""

    def forward(self, x: Tensor) -> Tensor:
        """Returns an empty tensor; callers check ``StaticStage.has_exit``."""
        return x.new_zeros(0)


class StaticStage(nn.Module):
    """Stage k of the extracted network: extends every tap by its own slice, then its exit head."""

    def __init__(self, ops: List[nn.Module], head: nn.Module, has_exit: bool):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.head = head
        self.has_exit = has_exit

    def forward(self, img: Tensor, prev: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """img (N, 3, R, R) at the subnet's resolution; prev: taps of stages < k (same N)."""
        cur: List[Tensor] = []
        for op in self.ops:
            cur.append(op(img, prev, cur))
        return self.head(cur[-1]), cur


class StaticMultiStageNet(nn.Module):
    """A subnet as a standalone multi-stage network; forward returns one logits tensor per
    enabled exit, like the supernet."""

    def __init__(self, stages: List[StaticStage], resolution: int, in_chans: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.resolution, self.in_chans = resolution, in_chans

    def resize(self, x: Tensor) -> Tensor:
        """Bilinear resize of (N, C, H, W) to the subnet's resolution (a no-op when equal)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"input: expected (N, {self.in_chans}, H, W), got {list(x.shape)}")
        if x.shape[-1] == self.resolution and x.shape[-2] == self.resolution:
            return x
        return F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                             align_corners=False)

    def forward(self, x: Tensor) -> List[Tensor]:
        """(N, C, H, W) -> logits of every enabled exit, each (N, num_classes)."""
        img = self.resize(x)
        prev: List[Tensor] = []
        outs: List[Tensor] = []
        for stage in self.stages:
            logits, prev = stage(img, prev)
            if stage.has_exit:
                outs.append(logits)
        return outs
