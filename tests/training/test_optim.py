"""Parameter groups (no decay on BatchNorm and biases) and per-step schedules."""

from __future__ import annotations

import math

import pytest
import torch

import enas4d
from enas4d.nn.layers import MSBatchNorm2d
from enas4d.training.optim import cosine_schedule, onecycle_schedule, param_groups


def test_no_weight_decay_on_batchnorm_and_biases():
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2)
    decay, no_decay = param_groups(net, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    no_ids = {id(p) for p in no_decay["params"]}
    bn_params = [p for m in net.modules() if isinstance(m, MSBatchNorm2d) for p in (m.weight, m.bias)]
    biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert bn_params and biases
    assert all(id(p) in no_ids for p in bn_params + biases)
    conv_weights = [p for n, p in net.named_parameters() if p.ndim == 4]
    assert {id(p) for p in conv_weights} <= {id(p) for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def _lrs(sch, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def test_cosine_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(cosine_schedule(opt, total_steps=12, warmup_steps=2, min_lr_ratio=0.1), opt, 12)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2] == pytest.approx(1.0)
    assert lrs[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # decreasing after warm-up
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(opt, total_steps=4, warmup_steps=-1)
    with pytest.warns(UserWarning, match="warming up over 3 steps"):
        cosine_schedule(opt, total_steps=4, warmup_steps=10)


def test_onecycle_peaks_at_configured_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4, momentum=0.9)
    lrs = _lrs(onecycle_schedule(opt, total_steps=20, pct_start=0.25), opt, 20)
    assert max(lrs) == pytest.approx(0.4)
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert lrs[-1] < lrs[0]
