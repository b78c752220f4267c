"""Registry of supernet families: ``@register_supernet`` on one-line factories (timm-style)."""

from __future__ import annotations

from typing import Callable

from enas4d.models.supernet import MultiStageSupernet

Factory = Callable[[int, int, int], MultiStageSupernet]
_REGISTRY: dict[str, Factory] = {}


def register_supernet(fn: Factory) -> Factory:
    """Register a factory ``fn(num_classes, num_stages, in_chans)`` under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"supernet {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_supernets() -> list[str]:
    """Registered supernet names, sorted."""
    return sorted(_REGISTRY)


def create_supernet(name: str, num_classes: int = 10, num_stages: int = 3, in_chans: int = 3) -> MultiStageSupernet:
    """Build a registered supernet; an unknown name fails listing the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(f"supernet: unknown name {name!r}; registered: {list_supernets()}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    return _REGISTRY[name](num_classes, num_stages, in_chans)
