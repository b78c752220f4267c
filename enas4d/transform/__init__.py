"""Transforming static CNNs into multi-stage supernets (S2DNAS, design.md section 8)."""

from enas4d.transform.graph import GraphSupernet, from_static, graph_from_static
from enas4d.transform.s2dnas import TransformError, channel_importance, sort_channels

__all__ = ["GraphSupernet", "TransformError", "channel_importance", "from_static", "graph_from_static",
           "sort_channels"]
