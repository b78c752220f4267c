"""Lightning datamodules for enas4d and their registry.

Every datamodule yields ``(x, y)`` batches, x float32 (N, 3, H, W) normalised, y int64 (N,), and
exposes ``num_classes``, ``class_names``, ``in_chans``, ``image_size``, ``mean``, ``std`` and
``bn_dataloader()``; see :mod:`enas4d.data.base` for the shared behaviour.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from enas4d.data.base import ImageDataModule
from enas4d.data.cifar import CIFARDataModule
from enas4d.data.digits import DigitsDataModule
from enas4d.data.imagefolder import ImageFolderDataModule

__all__ = [
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "create_datamodule",
    "list_datamodules",
    "register_datamodule",
]

_REGISTRY: dict[str, Callable[..., ImageDataModule]] = {}


def register_datamodule(name: str, factory: Callable[..., ImageDataModule]) -> None:
    """Make ``factory`` (a datamodule class or partial) available as ``create_datamodule(name)``."""
    if name in _REGISTRY:
        raise ValueError(f"datamodule '{name}' is already registered")
    _REGISTRY[name] = factory


def list_datamodules() -> list[str]:
    """Sorted names accepted by :func:`create_datamodule`."""
    return sorted(_REGISTRY)


def create_datamodule(name: str, **cfg: Any) -> ImageDataModule:
    """Build the datamodule registered as ``name`` from its constructor arguments ``cfg``.

    Unknown keys in ``cfg`` are rejected by the constructor (no catch-all ``**kwargs`` there).

    Raises:
        ValueError: If ``name`` is not registered; the message lists the valid names.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown datamodule '{name}'; valid names: {', '.join(list_datamodules())}")
    return _REGISTRY[name](**cfg)


register_datamodule("digits", DigitsDataModule)
register_datamodule("cifar10", functools.partial(CIFARDataModule, variant="cifar10"))
register_datamodule("cifar100", functools.partial(CIFARDataModule, variant="cifar100"))
register_datamodule("imagefolder", ImageFolderDataModule)
