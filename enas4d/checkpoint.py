"""The checkpoint contract shared by training, search and export.

A training checkpoint is a Lightning checkpoint (``torch.save`` of a dict) with, besides
Lightning's own keys, ``ckpt["enas4d"]``::

    {
      "format_version": 1,
      "supernet": {"name": str, "num_classes": int, "num_stages": int, "in_chans": int,
                   "spec": NetSpec.to_dict() (optional: older checkpoints rebuild by name), or
                           GraphSpec.to_dict() ({"kind": "graph", "source", ...}) of a transformed
                           torchvision/timm network},
      "space": SearchSpace.to_config(),
      "data": {"name": str, "cfg": dict, "mean": [float], "std": [float],
               "class_names": [str], "image_size": int},
    }

and the supernet's weights in ``ckpt["state_dict"]`` under the prefix ``net.`` (the attribute
name of the supernet in the LightningModule). Search and export rebuild everything from this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from enas4d.models import MultiStageSupernet, NetSpec, create_supernet
from enas4d.space import SearchSpace

FORMAT_VERSION = 1
# Data settings that decide which images are validation images: search and export must not change them.
SPLIT_KEYS = frozenset({"seed", "val_fraction", "val_size", "use_val_folder", "variant"})
STATE_PREFIX = "net."  # LightningModule attribute holding the supernet


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or of another format/space."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its supernet and data."""

    supernet: dict[str, Any]
    space: dict[str, Any]
    data: dict[str, Any]


def make_meta(net: MultiStageSupernet, data: dict[str, Any]) -> dict[str, Any]:
    """The ``ckpt["enas4d"]`` entry for ``net`` trained on ``data`` (see module docstring)."""
    missing = {"name", "cfg", "mean", "std", "class_names", "image_size"} - set(data)
    if missing:
        raise ValueError(f"checkpoint data meta: missing keys {sorted(missing)}")
    return {
        "format_version": FORMAT_VERSION,
        "supernet": {"name": net.name, "num_classes": net.num_classes, "num_stages": net.num_stages,
                     "in_chans": net.in_chans, "spec": net.spec.to_dict()},
        "space": net.space.to_config(),
        "data": dict(data),
    }


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], CheckpointMeta]:
    """Load a checkpoint file and its enas4d meta; clear errors for missing/corrupt/foreign files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"ckpt: no checkpoint file at {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"ckpt: {path!r} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    meta = ckpt.get("enas4d") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"ckpt: {path!r} is not an enas4d checkpoint (no 'enas4d' entry)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"ckpt: {path!r} has format_version {version!r}; this enas4d reads {FORMAT_VERSION}")
    return ckpt, CheckpointMeta(meta["supernet"], meta["space"], meta["data"])


def supernet_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The supernet's own state dict out of a Lightning checkpoint's ``state_dict``."""
    sd = ckpt.get("state_dict", {})
    return {k[len(STATE_PREFIX):]: v for k, v in sd.items() if k.startswith(STATE_PREFIX)}


def build_supernet(sn: dict[str, Any]) -> MultiStageSupernet:
    """The (untrained) supernet a checkpoint's ``supernet`` entry describes: from its stored
    NetSpec when there is one (transformed supernets have no registered name), else by name; a
    network transformed from a torchvision/timm graph (``spec.kind == "graph"``) from its source."""
    if isinstance(sn.get("spec"), dict) and sn["spec"].get("kind") == "graph":
        from enas4d.transform.graph import build_graph_supernet  # the transform imports this module

        return build_graph_supernet(sn)
    if sn.get("spec") is not None:
        return MultiStageSupernet(NetSpec.from_dict(sn["spec"]), sn["num_classes"], sn["num_stages"],
                                  sn["in_chans"], name=sn["name"])
    return create_supernet(sn["name"], num_classes=sn["num_classes"], num_stages=sn["num_stages"],
                           in_chans=sn["in_chans"])


def load_supernet(path: str | os.PathLike) -> tuple[MultiStageSupernet, CheckpointMeta]:
    """Rebuild the supernet of a checkpoint, with its weights, in eval mode on CPU."""
    ckpt, meta = read_checkpoint(path)
    sn = meta.supernet
    net = build_supernet(sn)
    if net.space != SearchSpace.from_config(meta.space):
        raise CheckpointError(f"ckpt: the search space stored in {os.fspath(path)!r} differs from "
                              f"supernet {sn['name']!r}'s space in this version of enas4d")
    try:
        net.load_state_dict(supernet_state(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"ckpt: weights in {os.fspath(path)!r} do not fit supernet {sn['name']!r}: {e}") from e
    return net.eval(), meta


def build_datamodule(meta: CheckpointMeta, overrides: dict[str, Any]) -> Any:
    """The training run's datamodule, rebuilt from the checkpoint meta (set up, data loaded).

    ``overrides`` may change where the data live or how it is loaded, never which images are
    validation images (:data:`SPLIT_KEYS`).
    """
    from enas4d.data import create_datamodule  # Lightning import only when data are needed

    cfg = dict(meta.data["cfg"])
    cfg.pop("_target_", None)
    for key, value in overrides.items():
        if key in SPLIT_KEYS and cfg.get(key) != value:
            raise CheckpointError(f"data_overrides.{key}: changes which images are validation images; search "
                                  f"and export use the validation split the training used ({key}={cfg.get(key)!r})")
        if key in ("mean", "std"):
            raise CheckpointError(f"data_overrides.{key}: normalisation comes from the checkpoint")
    cfg.update(overrides)
    cfg["mean"], cfg["std"] = list(meta.data["mean"]), list(meta.data["std"])
    name = meta.data["name"]
    try:
        dm = create_datamodule(name, **cfg)
        dm.setup("validate")
    except (ValueError, TypeError, OSError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"data: cannot rebuild {name!r} from the checkpoint's data config: {msg}") from e
    return dm
