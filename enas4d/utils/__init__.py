"""Small shared helpers (seeding, ...)."""

from enas4d.utils.batches import rebatch
from enas4d.utils.seed import derive_seed, make_generator

__all__ = ["derive_seed", "make_generator", "rebatch"]
