"""Fixtures for the search tests: a tiny random-weight checkpoint on digits and a config factory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import enas4d
from enas4d.checkpoint import make_meta
from enas4d.search.cli import CONF_DIR

# Digits with a small validation split: 40 images, data seed 0 (what "training" used).
DATA_CFG = dict(image_size=8, batch_size=32, eval_batch_size=None, val_fraction=0.1, val_size=40, seed=0,
                crop_padding=0, hflip=False, num_workers=0, pin_memory=False)


def write_checkpoint(path: Path, num_stages: int = 2, data_cfg: dict | None = None, seed: int = 0) -> Path:
    """A checkpoint following enas4d/checkpoint.py's contract, random weights (no training)."""
    from enas4d.data import create_datamodule

    torch.manual_seed(seed)
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=num_stages, in_chans=3)
    cfg = dict(DATA_CFG if data_cfg is None else data_cfg)
    try:
        dm = create_datamodule("digits", **cfg)
        dm.setup()
        mean, std = dm.mean, dm.std
    except ValueError:  # a deliberately broken data config (bad-input tests)
        mean, std = [0.1, 0.1, 0.1], [0.3, 0.3, 0.3]
    cfg["mean"], cfg["std"] = list(mean), list(std)
    data = {"name": "digits", "cfg": cfg, "mean": list(mean), "std": list(std),
            "class_names": [str(i) for i in range(10)], "image_size": cfg["image_size"]}
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                "enas4d": make_meta(net, data)}, path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-exit resnet_cifar checkpoint on digits (random weights)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/search.yaml shrunk for tests (few evaluations, small BN subset, cache in tmp)."""

    def make(*overrides: str) -> DictConfig:
        base = [f"cache_dir={tmp_path / 'cache'}", "evaluations=3", "static_evaluations=2", "population=2",
                "bn.images=48", "bn.batch_size=24", "front_levels=8", "progress=false", "threads=1",
                "predictor.holdout=0"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("search", overrides=base + list(overrides))

    return make
