"""Where a static network comes from (``supernet.source``) and its weights (``supernet.weights``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from enas4d.checkpoint import CheckpointError, load_supernet
from enas4d.models import MultiStageSupernet, create_supernet, list_supernets
from enas4d.transform.s2dnas import TransformError, from_static

__all__ = ["load_static", "static_names", "transformed_from_config"]


def static_names() -> list[str]:
    """Registered networks with one architecture (usable as ``source=enas4d:NAME``)."""
    out = []
    for name in list_supernets():
        space = create_supernet(name, num_stages=1).space
        if all(len(g.choices) == 1 for g in space.genes):
            out.append(name)
    return out


def load_static(source: str, weights: str | None, num_classes: int, in_chans: int) -> MultiStageSupernet:
    """The static (K = 1) network ``source`` names, with ``weights`` (an enas4d checkpoint or a
    state dict file; None keeps the random initialisation), in eval mode. Nothing is downloaded."""
    kind, _, name = source.partition(":")
    if kind != "enas4d" or name not in static_names():
        raise TransformError(f"supernet.source={source!r} not supported; allowed: "
                             f"{['enas4d:' + n for n in static_names()]} (torchvision and timm models: not yet)")
    if weights is None:
        return create_supernet(name, num_classes=num_classes, num_stages=1, in_chans=in_chans).eval()
    if not os.path.isfile(weights):
        raise TransformError(f"supernet.weights: no file at {weights!r}")
    try:
        net, meta = load_supernet(weights)
    except CheckpointError:
        net = create_supernet(name, num_classes=num_classes, num_stages=1, in_chans=in_chans)
        try:
            state: Any = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - unreadable file or mismatched tensors: one message
            raise TransformError(f"supernet.weights: {weights!r} is neither an enas4d checkpoint nor a state dict "
                                 f"of {name!r} ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        return net.eval()
    if (net.name, net.num_stages, net.num_classes, net.in_chans) != (name, 1, num_classes, in_chans):
        raise TransformError(f"supernet.weights: {weights!r} holds {net.name!r} (K={net.num_stages}, "
                             f"{net.num_classes} classes, {net.in_chans} channels); expected {name!r} "
                             f"(K=1, {num_classes} classes, {in_chans} channels)")
    return net


def transformed_from_config(cfg: Any, num_classes: int, in_chans: int) -> tuple[MultiStageSupernet, MultiStageSupernet]:
    """(K-stage supernet, its static source) from a ``supernet=from_static`` config node."""
    static = load_static(str(cfg.source), cfg.weights, num_classes, in_chans)

    def opt(key: str) -> Any:
        v = cfg.get(key)
        return None if v is None else list(v)

    net = from_static(static, int(cfg.num_stages), width_mults=opt("width_mults"), kernels=opt("kernels"),
                      depths=opt("depths"), resolutions=opt("resolutions"), sort=bool(cfg.sort_channels))
    for p in static.parameters():
        p.requires_grad_(False)
    return net, static
