"""Callbacks of supernet training."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

__all__ = ["StepTrace"]


class _AllReduceCount:
    """State of the counting comm hook: how often each gradient bucket was all-reduced."""

    def __init__(self) -> None:
        self.process_group: dist.ProcessGroup | None = None  # None: the default group
        self.counts: Counter[int] = Counter()  # bucket index -> all-reduces since the last reset


def _counting_allreduce(state, bucket):  # noqa: ANN001, ANN202
    """DDP comm hook: count the bucket, then run DDP's default all-reduce (averaging).

    ``state`` is an _AllReduceCount and ``bucket`` a dist.GradBucket; no annotations, because DDP
    checks them against the real classes and this module's annotations are strings (PEP 563).
    """
    state.counts[bucket.index()] += 1
    return default_hooks.allreduce_hook(state.process_group, bucket)


class StepTrace(pl.Callback):
    """Write one JSON line per training step: the subnets trained, the losses, a parameter checksum
    and, under DDP, how often each gradient bucket was all-reduced during the step.

    One file per process, ``dirpath/trace_rank{R}.jsonl``, appended to (a resumed run continues
    it). Meant for checking reproducibility and DDP behaviour; it costs one pass over the
    parameters per step.

    Args:
        dirpath: folder of the trace files (created if missing).
    """

    def __init__(self, dirpath: str | os.PathLike[str]):
        self.dirpath = Path(dirpath)
        self._count: _AllReduceCount | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Create the folder; under DDP, register the counting all-reduce hook."""
        self.dirpath.mkdir(parents=True, exist_ok=True)
        model = trainer.strategy.model
        if isinstance(model, DistributedDataParallel):
            self._count = _AllReduceCount()
            model.register_comm_hook(self._count, _counting_allreduce)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Append this step's record."""
        last = pl_module.last_step
        record = {"step": last["step"], "epoch": last["epoch"], "batch_idx": last["batch_idx"],
                  "subnets": [s.to_json() for s in last["subnets"]], "loss": float(last["loss"]),
                  "losses": [float(v) for v in last["losses"]]}
        with torch.no_grad():
            record["param_sum"] = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        record["lr"] = [g["lr"] for g in trainer.optimizers[0].param_groups]
        if self._count is not None:
            record["allreduce"] = {str(k): v for k, v in sorted(self._count.counts.items())}
            self._count.counts.clear()
        with open(self.dirpath / f"trace_rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
