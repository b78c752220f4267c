"""Supernet training: the Lightning module, subnet sampling, losses, schedules (and, re-exported, BN re-estimation)."""

from enas4d.nn.bn import BNEstimationSet, bn_buffers, evaluate_exits, load_bn_buffers
from enas4d.training.callbacks import StepTrace
from enas4d.training.losses import distillation_loss, multi_exit_loss
from enas4d.training.module import SupernetModule, check_meta_compatible
from enas4d.training.optim import cosine_schedule, onecycle_schedule, param_groups
from enas4d.training.sampling import SandwichSampler, middle_subnet, restrict

__all__ = ["BNEstimationSet", "SandwichSampler", "StepTrace", "SupernetModule", "bn_buffers", "check_meta_compatible",
           "cosine_schedule", "distillation_loss", "evaluate_exits", "load_bn_buffers", "middle_subnet",
           "multi_exit_loss", "onecycle_schedule", "param_groups", "restrict"]
