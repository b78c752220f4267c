"""Transforming static CNNs into multi-stage supernets (S2DNAS, design.md section 8)."""

from enas4d.transform.s2dnas import TransformError, channel_importance, from_static, sort_channels

__all__ = ["TransformError", "channel_importance", "from_static", "sort_channels"]
