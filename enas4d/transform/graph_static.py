"""Tap ops of an extracted graph-transformed subnet (see :meth:`GraphSupernet.extract`).

They plug into :class:`enas4d.models.static.StaticStage` like the registered families' ops: every
op appends one tensor to the stage's list ``cur`` and may extend the tap an earlier stage left at
the same position (``prev_pos``). A node a later stage reads whole (a dense convolution's input,
the exit heads' input) is kept as a *tap* ``[s_1 | ... | s_k]``; any other value is the stage's own
slice only, computed from the own slices of its inputs, since per-channel ops act per slice.

TorchScript-clean; imports nothing from enas4d but :mod:`enas4d.models.static`.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enas4d.models.static import join


def _own(img: Tensor, cur: List[Tensor], src: int, width: int) -> Tensor:
    """The input at ``src`` (-1: the image); its last ``width`` channels when width > 0 (own slice of a tap)."""
    x = img if src < 0 else cur[src]
    if width > 0:
        x = x[:, x.shape[1] - width:]
    return x


class ChainOp(nn.Module):
    """Own slice = f(x): a dense conv of a whole tap, or per-channel layers of an own slice."""

    def __init__(self, f: nn.Module, src: int, src_width: int, prev_pos: int):
        super().__init__()
        self.f, self.src, self.src_width, self.prev_pos = f, src, src_width, prev_pos

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New value = [earlier slices |] f(input)."""
        return join(prev, self.prev_pos, self.f(_own(img, cur, self.src, self.src_width)))


class BinaryOp(nn.Module):
    """Own slice = post(a + b) or post(a * b) of two own slices (residual add, per-channel gate)."""

    def __init__(self, a: int, a_width: int, b: int, b_width: int, mul: bool, post: nn.Module, prev_pos: int):
        super().__init__()
        self.a, self.a_width, self.b, self.b_width = a, a_width, b, b_width
        self.mul, self.post, self.prev_pos = mul, post, prev_pos

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New value = [earlier slices |] post(a (+|*) b)."""
        x = _own(img, cur, self.a, self.a_width)
        y = _own(img, cur, self.b, self.b_width)
        return join(prev, self.prev_pos, self.post(x * y if self.mul else x + y))


class CatOp(nn.Module):
    """Own slice = post(cat of the inputs' own slices): slice k of a concatenation is [A_k | B_k | ...]."""

    def __init__(self, srcs: List[int], widths: List[int], post: nn.Module, prev_pos: int):
        super().__init__()
        self.srcs, self.widths, self.post, self.prev_pos = srcs, widths, post, prev_pos

    def forward(self, img: Tensor, prev: List[Tensor], cur: List[Tensor]) -> Tensor:
        """New value = [earlier slices |] post(cat(own slices))."""
        parts: List[Tensor] = []
        for i in range(len(self.srcs)):
            parts.append(_own(img, cur, self.srcs[i], self.widths[i]))
        return join(prev, self.prev_pos, self.post(torch.cat(parts, 1)))


class GlobalPool(nn.Module):
    """Global pooling over H and W: ``mean`` (x.mean), ``avg`` / ``max`` (adaptive pooling to 1x1)."""

    def __init__(self, kind: str, keepdim: bool):
        super().__init__()
        self.kind, self.keepdim = kind, keepdim

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, 1, 1), or (N, C) without keepdim."""
        if self.kind == "mean":
            return x.mean((2, 3), keepdim=self.keepdim)
        y = F.adaptive_avg_pool2d(x, 1) if self.kind == "avg" else F.adaptive_max_pool2d(x, 1)
        return y if self.keepdim else torch.flatten(y, 1)


class ScalarOp(nn.Module):
    """x (+ - * /) a number."""

    def __init__(self, fn: str, value: float):
        super().__init__()
        self.fn, self.value = fn, value

    def forward(self, x: Tensor) -> Tensor:
        """Elementwise ``x fn value``."""
        if self.fn == "add":
            return x + self.value
        if self.fn == "sub":
            return x - self.value
        if self.fn == "mul":
            return x * self.value
        return x / self.value
