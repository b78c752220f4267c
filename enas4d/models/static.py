"""The extracted (static) multi-stage network: plain torch modules of real shapes.

Stage ``k`` is a :class:`StaticStage`: a list of *tap ops*, one per feature map ("tap") that
stage ``k`` or a later one reads, in network order. Every tap holds the concatenation of the slices
computed so far, ``[s_1 | ... | s_k]``. Stage ``k`` receives the taps stages ``< k`` produced
(``prev``), appends its own slice to each, and returns them for stage ``k+1``; nothing earlier
stages computed is computed again (design.md section 3, "no recomputation").

A stage holds a tap only as long as something needs it: once its last reader in the stage has
run, and unless the next stage reads it, it is replaced by an empty tensor (the same for the
earlier stages' taps once extended). Keeping every feature map of a stage alive made each layer
write to fresh, cold memory; releasing them lets the allocator reuse warm memory (about 20% faster
at batch 16 to 256 on one CPU thread, for one stage as for three).

All modules here are TorchScript-compatible and import nothing from the rest of enas4d, so a
scripted model runs without the package.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TapOp(nn.Module):
    """Base of the tap ops: computes one tap of a stage, then releases the taps nobody reads any more.

    ``prev_pos``: position of this tap in the earlier stages' list (-1: none). ``drops`` (positions
    in the stage's own list) and ``drop_prev`` are set by :meth:`StaticStage.plan_release`.
    """

    __constants__ = ["drops", "drop_prev"]

    def __init__(self, prev_pos: int):
        super().__init__()
        self.prev_pos = prev_pos
        self.drops: Tuple[int, ...] = ()  # taps of this stage whose last reader this op is
        self.drop_prev = False  # release prev[prev_pos] once this op has read it

    def cur_reads(self) -> List[int]:
        """Positions of this stage's taps the op reads (Python only: for release planning)."""
        return []

    def release(self, prev: List[Tensor], cur: List[Tensor], none: Tensor) -> None:
        """Drop the references to the taps this op read last (their memory can be reused)."""
        if self.drop_prev:
            prev[self.prev_pos] = none
        for q in self.drops:
            cur[q] = none


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


class StemOp(TapOp):
    """Own slice of the stem: reads the image."""

    def __init__(self, f: ConvBNAct, prev_pos: int):
        super().__init__(prev_pos)
        self.f = f

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | f(img)]."""
        return join(prev, self.prev_pos, self.f(img))


def skip(x: Tensor, off: int) -> Tensor:
    """The channels of tap ``x`` from ``off`` on (a stage that reads only its latest slices)."""
    if off == 0:
        return x
    return x[:, off:]


class SeqOp(TapOp):
    """Own slice = a chain of conv-BN-act layers applied to one tap of this stage (from channel
    ``in_off`` on)."""

    def __init__(self, layers: nn.Sequential, src_pos: int, prev_pos: int, in_off: int = 0):
        super().__init__(prev_pos)
        self.layers, self.src_pos, self.in_off = layers, src_pos, in_off

    def cur_reads(self) -> List[int]:
        """Reads its source tap."""
        return [self.src_pos]

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | layers(cur[src])]."""
        return join(prev, self.prev_pos, self.layers(skip(cur[self.src_pos], self.in_off)))


class ResidualOp(TapOp):
    """Own slice = act(body(cur[src]) + shortcut), the shortcut being the own slice of another
    tap (identity), a conv-BN of that tap (projection), or nothing. The body reads its tap from
    channel ``in_off`` on, the projection from ``res_off`` on."""

    def __init__(self, body: nn.Module, src_pos: int, prev_pos: int, res_pos: int, res_width: int,
                 shortcut: nn.Module, act: nn.Module, in_off: int = 0, res_off: int = 0):
        super().__init__(prev_pos)
        self.body, self.src_pos, self.in_off = body, src_pos, in_off
        self.res_pos, self.res_width, self.res_off = res_pos, res_width, res_off  # res_width > 0: identity
        self.shortcut, self.act = shortcut, act

    def cur_reads(self) -> List[int]:
        """Reads the body's source tap and the residual's."""
        return [self.src_pos] + ([self.res_pos] if self.res_pos >= 0 else [])

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | act(body + shortcut)]."""
        y = self.body(skip(cur[self.src_pos], self.in_off))
        if self.res_pos >= 0:
            r = cur[self.res_pos]
            if self.res_width > 0:
                y = y + r[:, -self.res_width:]  # the own slice is the tap's last res_width channels
            else:
                y = y + self.shortcut(skip(r, self.res_off))
        return join(prev, self.prev_pos, self.act(y))


class PassOp(TapOp):
    """Own slice passes through unchanged (the slice's depth ends before this block)."""

    def __init__(self, src_pos: int, prev_pos: int, width: int):
        super().__init__(prev_pos)
        self.src_pos, self.width = src_pos, width

    def cur_reads(self) -> List[int]:
        """Reads its source tap."""
        return [self.src_pos]

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | own slice of cur[src]]."""
        return join(prev, self.prev_pos, cur[self.src_pos][:, -self.width:])


class JoinOp(TapOp):
    """The head's input of a stage whose taps hold its own slices only: [earlier slices | cur[src]]."""

    def __init__(self, src_pos: int, prev_pos: int):
        super().__init__(prev_pos)
        self.src_pos = src_pos

    def cur_reads(self) -> List[int]:
        """Reads its source tap."""
        return [self.src_pos]

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New tap = [earlier slices | cur[src]]."""
        return join(prev, self.prev_pos, cur[self.src_pos])


class KeepOp(TapOp):
    """A tap this stage does not extend but a later stage reads: handed on unchanged."""

    def __init__(self, prev_pos: int):
        super().__init__(prev_pos)

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

    __constants__ = ["can_release"]

    def __init__(self, ops: List[nn.Module], head: nn.Module, has_exit: bool):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.head = head
        self.has_exit = has_exit
        # Ops of other kinds (any module with the same forward) are run, but nothing is released.
        self.can_release = all(isinstance(op, TapOp) for op in ops)
        self.plan_release([True] * len(ops))  # hand every tap on until the next stage is known

    def taps_read(self, num_prev: int) -> List[bool]:
        """Which of the ``num_prev`` taps of the earlier stages this stage reads (all of them when
        it holds ops other than :class:`TapOp`, whose reads are not known)."""
        if not self.can_release:
            return [True] * num_prev
        read = [False] * num_prev
        for op in self.ops:
            if op.prev_pos >= 0:
                read[op.prev_pos] = True
        return read

    def plan_release(self, handed_on: List[bool]) -> None:
        """Release every tap after its last reader in this stage unless ``handed_on[pos]`` (the next
        stage reads it); earlier stages' taps once their (only) reader has run."""
        if not self.can_release:
            return
        n = len(self.ops)
        last = list(range(n))  # a tap nobody reads is released right after it is made
        for j, op in enumerate(self.ops):
            for q in op.cur_reads():
                last[q] = max(last[q], j)
        drops: List[List[int]] = [[] for _ in range(n)]
        for q in range(n - 1):  # the last tap is the head's input: the stage ends after it
            if not handed_on[q]:
                drops[last[q]].append(q)
        for op, d in zip(self.ops, drops):
            op.drops = tuple(d)
            op.drop_prev = op.prev_pos >= 0

    def forward(self, img: Tensor, prev: List[Tensor], release: bool = False) -> Tuple[Tensor, List[Tensor]]:
        """img (N, 3, R, R) at the subnet's resolution; prev: taps of stages < k (same N).

        With ``release`` (for callers that hand ``prev`` over and keep no copy), entries of ``prev``
        and of the returned list that no later reader needs become empty tensors (see the module
        docstring); without, nothing is released and ``prev`` is left as it was.
        """
        cur: List[Tensor] = []
        none = img[:0]  # placeholder of a released tap
        for op in self.ops:
            cur.append(op(img, prev, cur))
            if self.can_release:  # a constant: TorchScript compiles op.release only for TapOps
                if release:
                    op.release(prev, cur, none)
        return self.head(cur[-1]), cur


class StaticMultiStageNet(nn.Module):
    """A subnet as a standalone multi-stage network; forward returns one logits tensor per
    enabled exit, like the supernet."""

    def __init__(self, stages: List[StaticStage], resolution: int, in_chans: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.resolution, self.in_chans = resolution, in_chans
        for k, stage in enumerate(stages):
            n = len(stage.ops)
            stage.plan_release(stages[k + 1].taps_read(n) if k + 1 < len(stages) else [False] * n)

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
            logits, prev = stage(img, prev, True)
            if stage.has_exit:
                outs.append(logits)
        return outs
