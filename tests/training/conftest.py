"""Fixtures of the training tests (one torch thread: see helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.training.helpers import compose_train


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """Factory: ``tiny_cfg(*overrides, out=...)`` composes a tiny training config."""
    def make(*overrides: str, out: Path | None = None) -> DictConfig:
        return compose_train(out or tmp_path / "run", *overrides)
    return make
