"""Batched, seeded image augmentation on tensors.

Augmenting a whole batch with a few tensor ops is far cheaper than per-image PIL transforms on a
small CPU budget, and runs on the GPU when the batch is already there. All randomness is drawn
from an explicit CPU ``torch.Generator`` (see :func:`enas4d.utils.make_generator`), so the result
depends only on the generator's seed, not on the device or on global RNG state.
"""

from __future__ import annotations

import torch

__all__ = ["random_hflip", "random_translate"]


def random_translate(
    x: torch.Tensor, padding: int, fill: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Pad by ``padding`` on every side with ``fill`` and take a random crop of the original size.

    This is torchvision's ``RandomCrop(size, padding)`` applied independently to each image.

    Args:
        x: Images, (N, C, H, W), float.
        padding: Pixels added on each side; offsets are drawn from ``[0, 2 * padding]``.
        fill: Per-channel value of the padded border, (C,); pass the normalised value of black.
        generator: CPU generator the N crop offsets are drawn from.

    Returns:
        Translated images, (N, C, H, W), on ``x``'s device.
    """
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)  # (N, 2): row, col
    padded = fill.to(x).view(1, c, 1, 1).expand(n, c, hp, wp).clone()  # (N, C, Hp, Wp) border = fill
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (N, H) rows of padded to keep
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (N, W)
    # One flat gather (faster than 4-tensor advanced indexing): out[n, c, i, j] = padded[n, c, rows[n, i], cols[n, j]].
    flat = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, hp * wp).gather(2, flat).view(n, c, h, w)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``.

    Args:
        x: Images, (N, C, H, W).
        generator: CPU generator the N coin flips are drawn from.
        p: Probability of flipping one image.

    Returns:
        Images, (N, C, H, W), on ``x``'s device.
    """
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)  # (N,)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
