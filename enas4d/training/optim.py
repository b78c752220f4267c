"""Optimizer parameter groups and learning-rate schedules (stepped once per optimizer step)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

__all__ = ["cosine_schedule", "onecycle_schedule", "param_groups", "schedule_length"]


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: conv/linear weights with ``weight_decay``; BatchNorm parameters and biases without.

    Every tensor with at most one dimension is a BatchNorm scale/shift or a bias; decaying them
    only shrinks the normalised features and hurts accuracy.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _WarmupCosine:
    """lr factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``.

    A class, not a closure, so the factor is picklable (hparams, checkpoints).
    """

    def __init__(self, total: int, warmup: int, floor: float):
        self.total, self.warmup, self.floor = total, warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                    min_lr_ratio: float = 0.0) -> LRScheduler:
    """Cosine decay over ``total_steps`` optimizer steps after a linear warm-up of ``warmup_steps``."""
    if total_steps < 1:
        raise ValueError(f"scheduler: total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"module.scheduler.warmup_steps={warmup_steps} not allowed; allowed: >= 0")
    if warmup_steps >= total_steps:  # e.g. a preset's warm-up in a short debugging run
        warnings.warn(f"module.scheduler.warmup_steps={warmup_steps} >= the run's {total_steps} steps; "
                      f"warming up over {total_steps - 1} steps instead", stacklevel=2)
        warmup_steps = total_steps - 1
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"module.scheduler.min_lr_ratio={min_lr_ratio} not allowed; allowed: [0, 1]")
    return LambdaLR(optimizer, _WarmupCosine(total_steps, warmup_steps, min_lr_ratio))


def onecycle_schedule(optimizer: Optimizer, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                      final_div_factor: float = 1e4) -> LRScheduler:
    """torch's one-cycle policy over ``total_steps``, peaking at each group's configured lr."""
    if total_steps < 1:
        raise ValueError(f"scheduler: total_steps must be >= 1, got {total_steps}")
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                      div_factor=div_factor, final_div_factor=final_div_factor)


def schedule_length(state: dict[str, Any]) -> int | None:
    """Optimizer steps a saved schedule of this module lasts, from its ``state_dict()``; None if unknown."""
    if "total_steps" in state:  # OneCycleLR
        return int(state["total_steps"])
    lambdas = state.get("lr_lambdas") or [None]
    if isinstance(lambdas[0], dict) and "total" in lambdas[0]:  # LambdaLR of a _WarmupCosine (its __dict__)
        return int(lambdas[0]["total"])
    return None
