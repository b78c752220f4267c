"""Re-batching a stream of ``(x, y)`` batches (validation passes at a chosen batch size)."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["rebatch"]


def rebatch(batches: Iterable[tuple[Tensor, Tensor]], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The same ``(x, y)`` stream in batches of ``batch_size`` (the last may be smaller), order kept."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    n = 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        n += y.shape[0]
        while n >= batch_size:
            X, Y = torch.cat(xs), torch.cat(ys)
            yield X[:batch_size], Y[:batch_size]
            xs, ys, n = [X[batch_size:]], [Y[batch_size:]], n - batch_size
    if n:
        yield torch.cat(xs), torch.cat(ys)
