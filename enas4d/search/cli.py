"""``enas4d-search``: find the subnet and exit thresholds of best validation accuracy for a budget.

    enas4d-search ckpt=outputs/demo/train/checkpoints/last.ckpt budget=0.5x
    enas4d-search ckpt=... budget=2.5ms device_profile=outputs/demo/profile/profile.json

The budget is average MACs per image, or average latency per image on the machine a device profile
(``enas4d-profile``) was measured on: then the per-stage costs the thresholds are calibrated with are
that profile's predicted latencies (integer nanoseconds) instead of MACs, each stage with a per-call
part that the images of a batch reaching it share (:mod:`enas4d.search.latency`), and nothing else
changes.

Everything is rebuilt from the checkpoint (supernet, weights, search space, and the datamodule
with the training run's split and normalisation), so the search runs on the validation split
the training held out and on nothing else. :func:`search` is the importable function; :func:`main`
is the thin Hydra entry point. The search itself: :mod:`enas4d.search.run` (what it builds first:
:mod:`enas4d.search.setup`; the problems it solves: :mod:`enas4d.search.problems`). Settings: conf/search.yaml, read once into a
:class:`~enas4d.search.config.SearchConfig`; the result: :class:`~enas4d.search.result.SearchResult`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from rich.console import Console

from enas4d.checkpoint import CheckpointError, build_datamodule
from enas4d.search.budget import BudgetError
from enas4d.search.config import SearchConfig
from enas4d.search.evaluator import SearchError
from enas4d.search.latency import LatencyError
from enas4d.search.problems import DynamicProblem, StaticProblem
from enas4d.search.run import run_and_write
from enas4d.space import InvalidSubnetError
from enas4d.utils.cli import CONF_DIR, one_line_errors

__all__ = ["CONF_DIR", "DynamicProblem", "StaticProblem", "build_datamodule", "search", "main"]


def search(cfg: DictConfig | SearchConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Run the search described by ``cfg`` (conf/search.yaml, composed or read into a SearchConfig);
    write outputs to ``out_dir``.

    Returns the ``result.json`` content (:meth:`SearchResult.to_dict`). Bad input raises SearchError,
    BudgetError, LatencyError or CheckpointError (one-line messages) before anything is written.
    """
    config = cfg if isinstance(cfg, SearchConfig) else SearchConfig.from_cfg(cfg)
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return run_and_write(config, Path(out_dir), console or Console()).to_dict()
    finally:
        torch.set_num_threads(old_threads)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="search")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the chosen subnet's validation accuracy (for sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    with one_line_errors("enas4d-search", SearchError, BudgetError, CheckpointError, InvalidSubnetError, LatencyError):
        result = search(cfg, HydraConfig.get().runtime.output_dir)
    return result["val_accuracy"]


if __name__ == "__main__":
    main()
