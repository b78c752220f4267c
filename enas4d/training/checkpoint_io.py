"""Checkpoint writing that never leaves a half-written checkpoint in place of a good one."""

from __future__ import annotations

import os
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from enas4d.utils.files import atomic_target

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing to a temporary file in the target folder, then renaming.

    A run killed while ``last.ckpt`` is being rewritten keeps the previous ``last.ckpt`` whole, so it
    can still resume.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        with atomic_target(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
