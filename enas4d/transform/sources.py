"""Where a static network comes from (``supernet.source``) and its weights (``supernet.weights``).

``enas4d:NAME`` is one of the project's one-architecture networks (split by its NetSpec);
``torchvision:NAME`` and ``timm:NAME`` are built with random weights (nothing is downloaded) and
split from their graph (:mod:`enas4d.transform.graph`); their weights come from a local state-dict file.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enas4d.checkpoint import CheckpointError, load_supernet
from enas4d.models import create_supernet, list_supernets
from enas4d.transform.graph import graph_from_static
from enas4d.transform.s2dnas import TransformError, from_static, frozen_static_training

__all__ = ["GRAPH_KINDS", "StaticTeacher", "build_source_model", "load_static", "static_names",
           "transformed_from_config"]

GRAPH_KINDS = ("torchvision", "timm")  # sources transformed from their graph
log = logging.getLogger(__name__)


def static_names() -> list[str]:
    """Registered networks with one architecture (usable as ``source=enas4d:NAME``)."""
    out = []
    for name in list_supernets():
        space = create_supernet(name, num_stages=1).space
        if all(len(g.choices) == 1 for g in space.genes):
            out.append(name)
    return out


def _unknown(source: str, names: list[str], where: str) -> TransformError:
    close = difflib.get_close_matches(source.partition(":")[2], names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {where}"
    return TransformError(f"supernet.source={source!r} names no known model; {hint}")


def build_source_model(source: str, num_classes: int, in_chans: int) -> nn.Module:
    """The ``torchvision:NAME`` / ``timm:NAME`` classifier with random weights (no download), in eval mode."""
    kind, _, name = source.partition(":")
    if kind == "torchvision":
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)  # the classification models
        if name not in names:
            raise _unknown(source, names, "torchvision.models.list_models()")
        if in_chans != 3:
            raise TransformError(f"supernet.source={source!r}: torchvision classifiers read 3 channels, the data "
                                 f"have {in_chans}; use a timm model (it takes in_chans) or 3-channel data")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    elif kind == "timm":
        import timm

        if not timm.is_model(name):
            raise _unknown(source, timm.list_models(), "timm.list_models()")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    else:
        raise TransformError(f"supernet.source={source!r} not supported; allowed: enas4d:NAME, torchvision:NAME, "
                             "timm:NAME")
    return model.eval()


def _load_state_dict(model: nn.Module, weights: str, source: str) -> None:
    """Load a state-dict file into ``model``; one line saying what does not fit otherwise."""
    if not os.path.isfile(weights):
        raise TransformError(f"supernet.weights: no file at {weights!r}")
    try:
        state: Any = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one message
        raise TransformError(f"supernet.weights: {weights!r} is not a state-dict file saved with torch.save "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TransformError(f"supernet.weights: {weights!r} holds no state dict (name -> tensor)")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        what = [f"{len(missing)} missing (e.g. {missing[0]!r})"] if missing else []
        what += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})"] if unexpected else []
        what += [f"{wrong[0]!r} is {list(state[wrong[0]].shape)} in the file, {list(own[wrong[0]].shape)} in the "
                 f"model"] if wrong else []
        raise TransformError(f"supernet.weights: {weights!r} does not fit {source} with {model_classes(model)} "
                             f"classes: {'; '.join(what)}; save model.state_dict() of the same model and class "
                             "count")
    model.load_state_dict(state)


def model_classes(model: nn.Module) -> str:
    """The class count of a classifier, for messages (its last Linear's outputs)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return str(last[-1].out_features) if last else "?"


class StaticTeacher(nn.Module):
    """A torchvision/timm classifier as a distillation teacher: the supernet's resizing, output as a list."""

    def __init__(self, model: nn.Module, resolution: int):
        super().__init__()
        self.model, self.resolution = model, resolution

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> [(N, classes)]."""
        r = self.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        return [self.model(x)]


def load_static(source: str, weights: str | None, num_classes: int, in_chans: int) -> nn.Module:
    """The static network ``source`` names, with ``weights`` (None keeps the random initialisation), in eval
    mode. Nothing is downloaded. ``enas4d:NAME``: a K = 1 MultiStageSupernet (weights: an enas4d checkpoint or
    a state dict); ``torchvision:NAME`` / ``timm:NAME``: the plain model (weights: a state-dict file)."""
    kind, _, name = source.partition(":")
    if kind in GRAPH_KINDS:
        model = build_source_model(source, num_classes, in_chans)
        if weights is not None:
            _load_state_dict(model, weights, source)
        return model.eval()
    if kind != "enas4d" or name not in static_names():
        raise TransformError(f"supernet.source={source!r} not supported; allowed: "
                             f"{['enas4d:' + n for n in static_names()]}, torchvision:NAME, timm:NAME")
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


def _graph_from_config(cfg: Any, num_classes: int, in_chans: int,
                       image_size: int | None) -> tuple[nn.Module, nn.Module | None]:
    """(graph supernet, teacher) for a torchvision/timm ``supernet.source`` (``image_size``: the data's)."""
    source = str(cfg.source)
    for key in ("kernels", "depths", "grow"):
        if cfg.get(key) is not None:
            raise TransformError(f"supernet.{key}={list(cfg[key])} not allowed for {source}: networks transformed "
                                 "from their graph are split, with elastic widths only; allowed: null")
    res = cfg.get("resolutions")
    if res is None and image_size is not None:  # the data's image size: what the model will see
        res = [image_size]
    if res is None or len(res) != 1:
        given = None if res is None else list(res)
        raise TransformError(f"supernet.resolutions={given} not allowed for {source}: give the one input side it "
                             "runs at, e.g. supernet.resolutions=[32]")
    static = load_static(source, cfg.weights, num_classes, in_chans)
    mults = cfg.get("width_mults")
    net = graph_from_static(static, int(cfg.num_stages), width_mults=None if mults is None else list(mults),
                            resolution=int(res[0]), sort=bool(cfg.sort_channels), source=source, in_chans=in_chans)
    if cfg.weights is None:  # a randomly initialised network teaches nothing
        log.warning("supernet.weights is null: %s starts from random weights and trains without a teacher", source)
        return net, None
    teacher = StaticTeacher(static, int(res[0])).eval()
    teacher.requires_grad_(False)
    return net, teacher


def transformed_from_config(cfg: Any, num_classes: int, in_chans: int,
                            image_size: int | None = None) -> tuple[nn.Module, nn.Module | None]:
    """(K-stage supernet, its static source as teacher) from a ``supernet=from_static`` config node."""
    if str(cfg.source).partition(":")[0] in GRAPH_KINDS:
        return _graph_from_config(cfg, num_classes, in_chans, image_size)
    static = load_static(str(cfg.source), cfg.weights, num_classes, in_chans)

    def opt(key: str) -> Any:
        v = cfg.get(key)
        return None if v is None else list(v)

    net = from_static(static, int(cfg.num_stages), width_mults=opt("width_mults"), kernels=opt("kernels"),
                      depths=opt("depths"), resolutions=opt("resolutions"), sort=bool(cfg.sort_channels),
                      grow=opt("grow"), fixed_static=freeze_static(cfg))
    for p in static.parameters():
        p.requires_grad_(False)
    return net, static


def freeze_static(cfg: Any) -> bool:
    """``supernet.freeze_static`` resolved: null is true with ``supernet.grow``, false without."""
    freeze = cfg.get("freeze_static")
    if freeze is None:
        return cfg.get("grow") is not None
    if freeze and cfg.get("grow") is None:
        raise TransformError("supernet.freeze_static=true not allowed without supernet.grow: a split network "
                             "has no stage that is the static network; allowed: false or null")
    return bool(freeze)


def training_from_config(cfg: Any, net: nn.Module) -> dict[str, Any]:
    """SupernetModule arguments of the fine-tuning (``supernet.freeze_static``; null: a grown
    supernet's static stage frozen and not run, see :func:`frozen_static_training`; none for a split one)."""
    return frozen_static_training(net) if freeze_static(cfg) else {}
