"""Hydra multirun: several jobs from one command, each in its own folder; submitit and Optuna plugins."""

from __future__ import annotations

import importlib.util

import pytest

from enas4d.checkpoint import read_checkpoint
from tests.training.helpers import TINY, run_cli


def _stages(job_dir) -> int:
    _, meta = read_checkpoint(job_dir / "checkpoints" / "last.ckpt")
    return meta.supernet["num_stages"]



def _installed(module: str) -> bool:
    """True if ``module`` imports; find_spec raises, not returns None, when a parent package is missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_multirun_runs_each_job_in_its_own_folder(tmp_path):
    """The README's `enas4d-train -m data=digits supernet.num_stages=2,3 trainer.max_epochs=1`, shrunk."""
    proc = run_cli("-m", *TINY[1:], "data=digits", "supernet.num_stages=2,3", "trainer.max_epochs=1",
                   "trainer.limit_train_batches=1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {_stages(tmp_path / "0"), _stages(tmp_path / "1")} == {2, 3}
    assert (tmp_path / "0" / "config.yaml").is_file() and (tmp_path / "1" / "csv").is_dir()


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                    reason="needs hydra-submitit-launcher (pip install -e '.[sweep]')")
def test_submitit_local_launcher(tmp_path):
    """The SLURM path's launcher, run with submitit's local executor (hydra/launcher=local)."""
    proc = run_cli("-m", "hydra/launcher=local", *TINY[1:], "supernet.num_stages=2,3",
                   "trainer.limit_train_batches=1", f"hydra.sweep.dir={tmp_path}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {_stages(tmp_path / "0"), _stages(tmp_path / "1")} == {2, 3}


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_optuna_sweeper"),
                    reason="needs hydra-optuna-sweeper (pip install -e '.[sweep]')")
def test_optuna_sweep(tmp_path):
    proc = run_cli("hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                   *TINY[1:], "trainer.limit_train_batches=1", f"hydra.sweep.dir={tmp_path}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_value" in best and "module.optimizer.lr" in best
