"""Multi-exit loss: weighted mean over exits of cross-entropy plus distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from enas4d.training.losses import distillation_loss, multi_exit_loss


def test_weighted_mean_of_cross_entropies():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 5, generator=gen) for _ in range(3)]
    y = torch.randint(0, 5, (6,), generator=gen)
    loss, per_exit = multi_exit_loss(logits, y, [1.0, 2.0, 1.0], label_smoothing=0.1)
    ce = [F.cross_entropy(z, y, label_smoothing=0.1) for z in logits]
    assert torch.allclose(loss, (ce[0] + 2 * ce[1] + ce[2]) / 4)
    assert all(torch.allclose(a, b) for a, b in zip(per_exit, ce))


def test_distillation_adds_kl_to_teacher():
    gen = torch.Generator().manual_seed(1)
    logits, teacher = [torch.randn(4, 3, generator=gen)], torch.randn(4, 3, generator=gen)
    y = torch.randint(0, 3, (4,), generator=gen)
    plain, _ = multi_exit_loss(logits, y, [1.0], 0.0)
    with_kd, _ = multi_exit_loss(logits, y, [1.0], 0.0, teacher=teacher, kd_weight=0.5, temperature=2.0)
    kl = F.kl_div(F.log_softmax(logits[0] / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean") * 4
    assert torch.allclose(with_kd - plain, 0.5 * kl)
    assert distillation_loss(teacher, teacher, 3.0).abs() < 1e-6  # nothing to learn from oneself
    assert distillation_loss(logits[0], teacher, 1.0) > 0


def test_weight_count_must_match_exits():
    with pytest.raises(ValueError, match="exit_weights"):
        multi_exit_loss([torch.zeros(2, 3)] * 2, torch.zeros(2, dtype=torch.long), [1.0], 0.0)
