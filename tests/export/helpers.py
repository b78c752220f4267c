"""Test helpers for the export tests: random subnets with re-estimated BN statistics, thresholds, a reference early exit."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from rich.console import Console
from torch import Tensor

import enas4d
from enas4d.checkpoint import make_meta
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.bn import reestimate_bn
from enas4d.search.calibrate import confidence
from enas4d.space import Subnet
from enas4d.utils.cli import CONF_DIR
from enas4d.utils.seed import make_generator

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]  # any normalisation: the model must apply it itself

# Digits with a small validation split (what "training" used), as in the search tests.
DATA_CFG = dict(image_size=8, batch_size=32, eval_batch_size=None, val_fraction=0.1, val_size=40, seed=0,
                crop_padding=0, hflip=False, num_workers=0, pin_memory=False)


def bn_reestimated(name: str, num_stages: int, seed: int, exits: tuple[bool, ...] | None = None
               ) -> tuple[MultiStageSupernet, Subnet]:
    """A random-weight supernet with a random subnet active, BN re-estimated on random images, eval mode."""
    torch.manual_seed(seed)
    net = enas4d.create_supernet(name, num_classes=10, num_stages=num_stages, in_chans=3)
    s = net.space.sample(make_generator(seed, 1))
    if exits is not None:
        s = Subnet(s.resolution, s.width, s.kernel, s.depth, s.expand, exits)
    net.set_subnet(s)
    gen = make_generator(seed, 2)
    reestimate_bn(net, [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(2)])
    return net.eval(), s


def normalise(x: Tensor) -> Tensor:
    """[0, 1] images -> what the supernet was trained on."""
    return (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)


def split_thresholds(outs: list[Tensor], measure: str, frac: float = 0.4) -> list[float]:
    """Thresholds that let about ``frac`` of the images leave at each exit but the last.

    Each lies half-way between two distinct confidences (never on one), as the search's do.
    """
    thr = []
    for o in outs[:-1]:
        c = torch.unique(confidence(o, measure)[1].double())  # sorted
        j = min(max(int((1 - frac) * len(c)), 1), len(c) - 1)
        thr.append(float((c[j - 1] + c[j]) / 2) if len(c) > 1 else float(c[0]) + 1e-3)
    return thr + [0.0]


def simulate(outs: list[Tensor], thresholds: list[float], measure: str) -> tuple[Tensor, Tensor]:
    """Reference early exit from every exit's logits: (logits of the deciding exit, exit index)."""
    n = outs[0].shape[0]
    logits, ex = torch.zeros_like(outs[0]), torch.full((n,), -1, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    for e, o in enumerate(outs):
        leave = undecided.clone() if e == len(outs) - 1 else \
            undecided & (confidence(o, measure)[1].double() >= thresholds[e])
        logits[leave], ex[leave] = o[leave], e
        undecided &= ~leave
    return logits, ex


def write_checkpoint(path: Path, name: str = "resnet_cifar", num_stages: int = 3, seed: int = 0) -> Path:
    """A checkpoint following enas4d/checkpoint.py's contract on tiny digits, random weights."""
    from enas4d.data import create_datamodule

    torch.manual_seed(seed)
    net = enas4d.create_supernet(name, num_classes=10, num_stages=num_stages, in_chans=3)
    cfg = dict(DATA_CFG)
    dm = create_datamodule("digits", **cfg)
    dm.setup()
    cfg["mean"], cfg["std"] = list(dm.mean), list(dm.std)
    data = {"name": "digits", "cfg": cfg, "mean": list(dm.mean), "std": list(dm.std),
            "class_names": [str(i) for i in range(10)], "image_size": cfg["image_size"]}
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                "enas4d": make_meta(net, data)}, path)
    return path


def write_result(path: Path, ckpt: Path, subnet: Subnet, thresholds: list[float], measure: str = "max_softmax",
                 **extra: object) -> Path:
    """A result.json as enas4d-search writes it (the keys export reads)."""
    res = {"subnet": subnet.to_dict(), "thresholds": thresholds, "confidence": measure,
           "exit_stages": [k for k, on in enumerate(subnet.exits) if on], "checkpoint": str(ckpt.resolve()),
           **extra}
    path.write_text(json.dumps(res))
    return path


def quiet() -> Console:
    """A console that prints nowhere (keeps test output readable)."""
    return Console(file=io.StringIO(), width=120)


def compose_cfg(name: str, *overrides: str) -> DictConfig:
    """The app config ``name`` (export, evaluate, ...) composed with ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))
