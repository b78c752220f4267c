"""Supernet families, the registry, and the static (extracted) network."""

from enas4d.models import families  # noqa: F401  (registers the families)
from enas4d.models.registry import create_supernet, list_supernets, register_supernet
from enas4d.models.static import StaticMultiStageNet
from enas4d.models.spec import GroupSpec, NetSpec
from enas4d.models.supernet import MultiStageSupernet

__all__ = ["create_supernet", "list_supernets", "register_supernet", "MultiStageSupernet", "NetSpec",
           "GroupSpec", "StaticMultiStageNet"]
