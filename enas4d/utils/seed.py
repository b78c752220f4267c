"""Deterministic seeds derived from integer keys.

Every random choice in enas4d (data split, shuffling, augmentation, subnet sampling, ...) draws
from a ``torch.Generator`` made by :func:`make_generator` from ``(seed, *keys)``, e.g.
``(seed, epoch, batch_idx)``. The same keys give the same stream on every machine and in every
process, so a resumed or distributed run sees exactly the randomness a fresh run would.
Python's ``hash()`` is not used: it is salted per process for strings and not part of any contract.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "make_generator"]

# torch.Generator.manual_seed accepts up to 64 bits; 63 keeps the value a valid signed int64 too.
_SEED_BITS = 63


def derive_seed(seed: int, *keys: int) -> int:
    """Return a stable 63-bit seed hashed from ``seed`` and integer ``keys``.

    Args:
        seed: Base seed of the run.
        *keys: Further integers that name the stream, e.g. ``epoch, batch_idx``. Order matters.

    Returns:
        An integer in ``[0, 2**63)``, identical across processes, platforms and Python versions.

    Raises:
        TypeError: If ``seed`` or a key is not an ``int`` (bools are rejected to catch mix-ups).
    """
    values = (seed, *keys)
    for value in values:
        # numpy / torch integer scalars are accepted through __index__.
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"make_generator: seed and keys must be ints, got {value!r} in {values!r}")
    # Decimal text with a separator is an unambiguous, length-prefixed-free encoding of any
    # sequence of (possibly negative, arbitrarily large) ints: (1, 23) != (12, 3).
    text = ",".join(str(int(v.__index__())) for v in values).encode("ascii")
    digest = hashlib.blake2b(text, digest_size=8, person=b"enas4d-seed").digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def make_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a ``torch.Generator`` seeded from ``(seed, *keys)`` via :func:`derive_seed`.

    Args:
        seed: Base seed of the run.
        *keys: Integers naming the stream, e.g. ``(epoch, batch_idx)``.
        device: Device of the generator; CPU generators give the same numbers on every machine.

    Returns:
        A freshly seeded generator; two calls with equal arguments produce identical streams.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *keys))
    return generator
