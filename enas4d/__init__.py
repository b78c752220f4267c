"""enas4d: elastic multi-stage supernets for dynamic (early-exit) inference."""

from enas4d.models import MultiStageSupernet, StaticMultiStageNet, create_supernet, list_supernets
from enas4d.space import InvalidSubnetError, SearchSpace, Subnet

__version__ = "0.1.0"
__all__ = ["create_supernet", "list_supernets", "MultiStageSupernet", "StaticMultiStageNet", "SearchSpace",
           "Subnet", "InvalidSubnetError", "__version__"]
