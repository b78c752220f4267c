"""Losses of one subnet with several exits: cross-entropy to the labels plus in-place distillation."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["distillation_loss", "multi_exit_loss"]


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al.). ``teacher`` is
    expected to be detached: in-place distillation must not push the teacher towards the student.
    """
    log_p = F.log_softmax(student / temperature, dim=1)  # (N, classes)
    q = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature * temperature


def multi_exit_loss(logits: Sequence[Tensor], target: Tensor, weights: Sequence[float], label_smoothing: float,
                    teacher: Tensor | None = None, kd_weight: float = 0.0,
                    temperature: float = 1.0) -> tuple[Tensor, list[Tensor]]:
    """Weighted mean over exits of ``CE(exit_k, target) [+ kd_weight * KD(exit_k, teacher)]``.

    A weighted *mean* (weights normalised to sum 1) keeps the loss scale, hence the useful learning
    rate, independent of the number of exits.

    Args:
        logits: one (N, classes) tensor per exit, in exit order.
        target: (N,) int64 labels.
        weights: one non-negative weight per exit.
        label_smoothing: label smoothing of the cross-entropy, in [0, 1).
        teacher: (N, classes) detached teacher logits, or None for no distillation.
        kd_weight: weight of the distillation term (ignored without a teacher).
        temperature: softmax temperature of the distillation term.

    Returns:
        The scalar loss and the per-exit (unweighted) losses, detached.
    """
    if len(weights) != len(logits):
        raise ValueError(f"module.exit_weights: expected {len(logits)} weights (one per exit), got {len(weights)}")
    total_w = float(sum(weights))
    per_exit, loss = [], torch.zeros((), device=target.device)
    for w, out in zip(weights, logits):
        term = F.cross_entropy(out, target, label_smoothing=label_smoothing)
        if teacher is not None and kd_weight > 0:
            term = term + kd_weight * distillation_loss(out, teacher, temperature)
        per_exit.append(term.detach())
        loss = loss + (w / total_w) * term
    return loss, per_exit
