"""Elastic multi-stage layers and BatchNorm re-estimation."""
