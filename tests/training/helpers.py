"""Helpers for the training tests: compose the real Hydra config, shrunk to a few tiny batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from enas4d.train import CONF_DIR

REPO = CONF_DIR.parent

# One intra-op thread: on a small shared machine, OpenMP threads that spin-wait for a busy core make
# tiny convolutions tens of times slower (measured 2.5 s vs 0.05 s for one forward pass).
torch.set_num_threads(1)

# A few 8-image batches of digits through a 2-exit supernet with one random subnet per step.
TINY = [
    "debug=default",
    "logger=csv",
    "summary=false",
    "supernet.num_stages=2",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "data.val_size=32",
    "module.n_random=1",
    "module.bn_images=16",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
]


def compose_train(output_dir: Path, *overrides: str) -> DictConfig:
    """The ``train`` config with TINY settings, then ``overrides``, writing under ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, f"paths.output_dir={output_dir}", *overrides])


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m enas4d.train ARGS`` from the repo root; returns the finished process."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "enas4d.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


class CrashAt(pl.Callback):
    """Die when optimizer step ``step`` is about to run: an exception, a real SIGKILL (kill -9), or
    (``term``) a SIGTERM, which Lightning turns into a stop after the step."""

    def __init__(self, step: int, kill: bool = False, term: bool = False):
        self.step, self.kill, self.term = step, kill, term

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        """Crash before the step runs, as a killed process would: nothing of it is saved."""
        if trainer.global_step == self.step:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.term:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise RuntimeError(f"simulated crash before step {self.step}")
