"""EarlyExitNet: equals the supernet, really skips work, scripts, and runs without enas4d."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from enas4d.export import jit
from enas4d.export.early_exit import CONFIDENCES, Confidence, EarlyExitNet, activations_in_place, build_early_exit
from enas4d.export.exporter import count_stage_macs
from enas4d.models import static as st
from enas4d.nn.layers import MSBatchNorm2d, MSConv2d
from enas4d.search import calibrate
from enas4d.search.calibrate import confidence

from .helpers import MEAN, STD, bn_reestimated, normalise, simulate, split_thresholds

CASES = [  # (supernet, stages, seed, confidence measure, fold BN, exits)
    ("resnet_cifar", 3, 0, "max_softmax", True, (True, True, True)),
    ("resnet_cifar", 3, 1, "margin", False, (True, False, True)),
    ("mbv3_cifar", 3, 2, "entropy", True, (False, True, True)),
]


def script(m: nn.Module) -> torch.jit.ScriptModule:
    return jit.roundtrip(m)  # scripted, saved and loaded back: what model.ts gives a user


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-K{c[1]}-{c[3]}-fold{c[4]}")
def case(request):
    """(supernet, subnet, eager model, scripted model, images, per-exit reference logits, thresholds, measure)."""
    name, K, seed, measure, fold, exits = request.param
    net, s = bn_reestimated(name, K, seed, exits)
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
    net, s = bn_reestimated("resnet_cifar", 2, 5, (True, True))
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


def test_input_outside_0_1_is_refused_clearly_and_the_check_can_be_turned_off(small):
    _, _, model, scripted = small
    x = torch.rand(4, 3, 32, 32)
    bad = [(x * 255, "values up to 255: pass x / 255"), ((x - 0.5) / 0.25, "negative values"),
           (torch.where(x > 0.5, torch.full_like(x, float("nan")), x), "NaN or inf"),
           (torch.where(x > 0.5, torch.full_like(x, float("inf")), x), "NaN or inf"), (x * 1000, "rescale")]
    for m, error in ((model, ValueError), (scripted, torch.jit.Error)):
        for xb, hint in bad:
            with pytest.raises(error, match=r"input: expected finite pixel values in \[0, 1\].*" + hint):
                m(xb)
            with pytest.raises(error, match="expected finite pixel values"):
                m.all_exits(xb)
        m(torch.clamp(x + 5e-4, max=1.0005))  # float rounding of un-normalised images is tolerated
        m(x[:0])  # an empty batch has no values to check
    want = scripted(x)
    scripted.set_input_check(False)  # the saved model's switch
    try:
        logits, ex = scripted(x * 255)  # runs (and is wrong), as before the check existed
        assert logits.shape == (4, 10) and torch.equal(scripted(x)[1], want[1])
    finally:
        scripted.set_input_check(True)
    with pytest.raises(torch.jit.Error, match="expected finite pixel values"):
        scripted(x * 255)
    net, s, _, _ = small
    unchecked = build_early_exit(net.extract(s), MEAN, STD, [0.5, 0.0], 10, check_range=False)
    unchecked(x * 255)


def test_channels_last_for_batches_changes_speed_not_values(case):
    """Batches of at least channels_last_min_batch images run channels-last: same exits and logits."""
    net, s, model, _, x, _, thr, measure = case
    nchw = build_early_exit(net.extract(s), MEAN, STD, thr, 10, measure, channels_last_min_batch=0)
    formats: list[bool] = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    hook = conv.register_forward_hook(lambda m, inp, out: formats.append(
        inp[0].shape[0] > 1 and inp[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        logits, ex = model(x)
    finally:
        hook.remove()
    assert formats == [True] and model.channels_last_min_batch <= 2
    want_logits, want_ex = nchw(x)
    assert torch.equal(ex, want_ex) and torch.allclose(logits, want_logits, atol=1e-5, rtol=0)
    for a, b in zip(model.all_exits(x), nchw.all_exits(x)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="channels_last_min_batch"):
        build_early_exit(net.extract(s), MEAN, STD, thr, 10, measure, channels_last_min_batch=-1)


def test_stages_release_taps_only_when_asked_and_hand_on_what_the_next_reads(case):
    net, s, _, _, x, _, _, _ = case
    static = net.extract(s)
    img = static.resize(x)
    prev: list[torch.Tensor] = []
    for k, stage in enumerate(static.stages):
        before = list(prev)
        with torch.no_grad():
            logits, kept = stage(img, prev)  # no release: the caller's list stays as it was
            assert all(a is b for a, b in zip(prev, before))
            logits2, taps = stage(img, list(prev), True)
        assert torch.equal(logits, logits2) and len(taps) == len(kept)
        read = static.stages[k + 1].taps_read(len(taps)) if k + 1 < len(static.stages) else [False] * len(taps)
        for i, (t, r) in enumerate(zip(taps, read)):
            if r:  # handed on, unchanged
                assert torch.equal(t, kept[i])
            elif i < len(taps) - 1:  # released once nothing reads it any more
                assert t.numel() == 0
        prev = taps
    assert sum(t.numel() == 0 for t in prev) == len(prev) - 1  # after the last stage only the head's input


def test_torchscript_helpers_hide_only_the_deprecation_notices(small):
    model = small[2]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        jit.roundtrip(model)
        with jit.quiet_torchscript():
            warnings.warn("a warning of the model itself", UserWarning)
            warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`.", FutureWarning)
    messages = [str(w.message) for w in seen]
    assert messages == ["a warning of the model itself"]
    with warnings.catch_warnings(record=True) as seen:  # torch still warns outside the helpers
        warnings.simplefilter("always")
        torch.jit.script(model)
    assert any("torch.jit.script" in str(w.message) and w.category is FutureWarning for w in seen)


def test_only_activations_of_fresh_tensors_work_in_place():
    """A conv-BN-act's activation may overwrite its conv's output; a bare one (which may read a view
    of a tap other ops still read) is left alone."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    net = nn.Sequential(st.ConvBNAct(conv, nn.Identity(), nn.ReLU()), nn.ReLU(), nn.Hardswish())
    assert activations_in_place(net) == 1
    assert net[0].act.inplace and not net[1].inplace and not net[2].inplace
