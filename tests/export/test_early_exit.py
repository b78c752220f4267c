"""EarlyExitNet: equals the supernet, really skips work, scripts, and runs without enas4d."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from enas4d.export.early_exit import CONFIDENCES, Confidence, EarlyExitNet, build_early_exit
from enas4d.export.exporter import count_stage_macs
from enas4d.models import static as st
from enas4d.nn.layers import MSBatchNorm2d, MSConv2d
from enas4d.search import calibrate
from enas4d.search.calibrate import confidence

from .helpers import MEAN, STD, calibrated, normalise, simulate, split_thresholds

CASES = [  # (supernet, stages, seed, confidence measure, fold BN, exits)
    ("resnet_cifar", 3, 0, "max_softmax", True, (True, True, True)),
    ("resnet_cifar", 3, 1, "margin", False, (True, False, True)),
    ("mbv3_cifar", 3, 2, "entropy", True, (False, True, True)),
]


def script(m: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(m)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-K{c[1]}-{c[3]}-fold{c[4]}")
def case(request):
    """(supernet, subnet, eager model, scripted model, images, per-exit reference logits, thresholds, measure)."""
    name, K, seed, measure, fold, exits = request.param
    net, s = calibrated(name, K, seed, exits)
    x = torch.rand(48, 3, 30, 30, generator=torch.Generator().manual_seed(seed))  # resized to s.resolution inside
    with torch.no_grad():
        ref = net(normalise(x))
    thr = split_thresholds(ref, measure)
    model = build_early_exit(net.extract(s), MEAN, STD, thr, 10, measure, fold)
    return net, s, model, script(model), x, ref, thr, measure


def test_every_exit_equals_supernet(case):
    _, s, model, scripted, x, ref, _, _ = case
    for outs in (model.all_exits(x), scripted.all_exits(x)):
        assert len(outs) == sum(s.exits)
        for a, b in zip(outs, ref):
            assert torch.allclose(a, b, atol=1e-4, rtol=0)


def test_early_exit_matches_reference_simulation(case):
    _, _, model, scripted, x, ref, thr, measure = case
    want_logits, want_exit = simulate(ref, thr, measure)
    assert len(want_exit.unique()) > 1  # the thresholds really split the batch
    for m in (model, scripted):
        logits, ex = m(x)
        assert ex.dtype == torch.int64 and ex.shape == (x.shape[0],)
        assert torch.equal(ex, want_exit)
        assert torch.allclose(logits, want_logits, atol=1e-4, rtol=0)


def test_batch_of_one_and_empty_batch(case):
    _, _, _, scripted, x, ref, thr, measure = case
    want_logits, want_exit = simulate(ref, thr, measure)
    for i in range(0, x.shape[0], 7):
        logits, ex = scripted(x[i:i + 1])
        assert int(ex[0]) == int(want_exit[i])
        assert torch.allclose(logits[0], want_logits[i], atol=1e-4, rtol=0)
    logits, ex = scripted(x[:0])
    assert logits.shape == (0, 10) and ex.shape == (0,)


def test_later_stages_run_only_on_undecided_images(case):
    _, s, model, _, x, ref, thr, measure = case
    _, want_exit = simulate(ref, thr, measure)
    seen: list[int] = []
    hooks = [stage.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0])) for stage in model.stages]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    # Stage k sees the images no enabled exit before it accepted.
    exit_of_stage = model.exit_of_stage
    expected = []
    for k in range(s.num_stages):
        earlier = [exit_of_stage[j] for j in range(k) if exit_of_stage[j] >= 0]
        expected.append(int((want_exit >= (max(earlier) + 1 if earlier else 0)).sum()))
    assert seen == [n for n in expected if n > 0]
    assert seen[0] == x.shape[0] and seen[-1] < x.shape[0]


def test_thresholds_replaceable_per_call(case):
    _, s, _, scripted, x, ref, _, _ = case
    E = sum(s.exits)
    logits, ex = scripted(x, torch.full((E,), float("inf")))
    assert bool((ex == E - 1).all()) and torch.allclose(logits, ref[-1], atol=1e-4, rtol=0)
    logits, ex = scripted(x, torch.zeros(E))
    assert bool((ex == 0).all()) and torch.allclose(logits, ref[0], atol=1e-4, rtol=0)
    scripted(x)  # the stored thresholds are untouched
    with pytest.raises(torch.jit.Error, match="thresholds"):
        scripted(x, torch.zeros(E + 1))


def test_flop_counter_agrees_with_analytic_macs(case):
    net, s, model, _, _, _, _, _ = case
    body, heads = net.stage_macs(s)
    counted = count_stage_macs(model)
    assert counted == [b + (h if on else 0) for b, h, on in zip(body, heads, s.exits)]
    cum, acc = [], 0
    for k, m in enumerate(counted):
        acc += m
        if s.exits[k]:
            cum.append(acc)
    assert cum == net.macs(s)


def test_holds_only_real_plain_modules(case):
    _, s, model, _, _, _, _, _ = case
    mods = list(model.modules())
    assert not any(isinstance(m, (MSConv2d, MSBatchNorm2d)) for m in mods)
    convs = [m for m in mods if isinstance(m, nn.Conv2d)]
    bns = [m for m in mods if isinstance(m, nn.BatchNorm2d)]
    folded = all(c.bias is not None for c in convs)
    assert folded == (not bns)  # folded: no BatchNorm left, every conv has the folded bias
    heads = [stage.head for stage in model.stages]
    assert [not isinstance(h, st.NoHead) for h in heads] == list(s.exits)
    assert all(sum(p.numel() for p in h.parameters()) == 0 for h in heads if isinstance(h, st.NoHead))
    assert not any(p.requires_grad for p in model.parameters())


@pytest.fixture(scope="module")
def small():
    """A 2-stage resnet_cifar subnet: (supernet, subnet, eager model, scripted model)."""
    net, s = calibrated("resnet_cifar", 2, 5, (True, True))
    model = build_early_exit(net.extract(s), MEAN, STD, [0.5, 0.0], 10)
    return net, s, model, script(model)


def test_bad_input_is_refused_clearly(small):
    net, s, model, scripted = small
    bad = [(torch.rand(3, 32, 32), "4-D"), (torch.rand(2, 1, 32, 32), "channels"),
           (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "floating-point")]
    for x, msg in bad:
        with pytest.raises(ValueError, match=msg):
            model(x)
        with pytest.raises(torch.jit.Error, match=msg):
            scripted(x)
    with pytest.raises(ValueError, match="thresholds"):
        EarlyExitNet(net.extract(s), MEAN, STD, [0.5], 10)
    with pytest.raises(ValueError, match="confidence"):
        Confidence("top5", 10)


def test_confidence_measures_match_the_search():
    assert CONFIDENCES == calibrate.CONFIDENCES  # the standalone copy offers exactly the search's measures
    logits = torch.randn(64, 10) * 3
    for measure in CONFIDENCES:
        assert torch.equal(Confidence(measure, 10)(logits), confidence(logits, measure)[1])
    one = torch.randn(5, 1)
    for measure in CONFIDENCES:
        assert torch.equal(Confidence(measure, 1)(one), confidence(one, measure)[1])


def test_torchscript_loads_without_enas4d(small, tmp_path):
    scripted = small[3]
    x = torch.rand(16, 3, 28, 28)
    scripted.save(str(tmp_path / "model.ts"))
    torch.save(x, tmp_path / "x.pt")
    code = "\n".join([
        "import sys, warnings",
        "sys.modules['enas4d'] = None  # any import of enas4d now raises ImportError",
        "warnings.simplefilter('ignore')",
        "import torch",
        "try:",
        "    import enas4d",
        "    sys.exit('enas4d is importable')",
        "except ImportError:",
        "    pass",
        "m = torch.jit.load('model.ts')",
        "logits, ex = m(torch.load('x.pt'))",
        "torch.save((logits, ex), 'out.pt')",
    ])
    # -I: isolated mode (no PYTHONPATH, no script dir or cwd on sys.path); cwd outside the repo.
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    logits, ex = torch.load(tmp_path / "out.pt")
    want_logits, want_ex = scripted(x)
    assert torch.equal(ex, want_ex) and torch.allclose(logits, want_logits, atol=1e-6, rtol=0)
