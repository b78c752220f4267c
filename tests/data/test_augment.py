"""Tests of the batched augmentation ops against per-image references."""

import torch

from enas4d.data.augment import random_hflip, random_translate


def _reference_translate(x, padding, fill, offsets):
    """torchvision-style RandomCrop with padding, one image at a time."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i, (r, col) in enumerate(offsets.tolist()):
        padded = fill.view(c, 1, 1).expand(c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, padding : padding + h, padding : padding + w] = x[i]
        out[i] = padded[:, r : r + h, col : col + w]
    return out


def test_translate_matches_reference():
    x = torch.randn(6, 3, 7, 5)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    got = random_translate(x, 2, fill, torch.Generator().manual_seed(4))
    offsets = torch.randint(0, 5, (6, 2), generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, _reference_translate(x, 2, fill, offsets))


def test_translate_without_padding_is_identity():
    x = torch.randn(2, 3, 4, 4)
    assert random_translate(x, 0, torch.zeros(3), torch.Generator()) is x


def test_hflip_probability_extremes():
    x = torch.randn(4, 3, 5, 6)
    assert torch.equal(random_hflip(x, torch.Generator(), p=1.0), x.flip(3))
    assert torch.equal(random_hflip(x, torch.Generator(), p=0.0), x)
