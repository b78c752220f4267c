"""Latency budgets: enas4d-profile's device profile, its predictions, and latency-budget searches on digits."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from enas4d.checkpoint import load_supernet
from enas4d.export.evaluate import evaluate
from enas4d.profile import CONF_DIR, main as profile_main, profile
from enas4d.search.budget import BudgetError, parse_budget
from enas4d.search.calibrate import (ExitTable, calibrate, expected_cost, forced_exit_costs, simulate,
                                     tradeoff)
from enas4d.search.cli import search
from enas4d.search.latency import (BODY_FEATURES, HEAD_FEATURES, PROFILE_FORMAT, DeviceProfile, LatencyCosts,
                                   LatencyError, call_fit_errors, fit_latency, fit_per_call, predicted_vs_measured,
                                   stage_features)
from enas4d.utils.files import file_digest
from enas4d.utils.seed import make_generator

from .conftest import write_checkpoint
from .test_calibrate import random_table


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def profile_cfg(*overrides: str):
    """conf/profile.yaml, quick (6 architectures, 2 repeats), batch 8 (and its sub-batch 2), one thread."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("profile", overrides=["quick=true", "batch_size=8", "threads=1", *overrides])


@pytest.fixture(scope="module")
def device_profile(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick profile of the tiny 2-exit digits checkpoint."""
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    profile(profile_cfg(f"ckpt={tiny_ckpt}"), out, quiet())
    return out


@pytest.mark.parametrize("text", ["2.5ms", "2500us", "0.0025s", "2500µs", " 2.5 ms "])
def test_latency_budgets_parse_to_seconds(text):
    b = parse_budget(text)
    assert b.latency and b.unit == "seconds" and not b.relative and b.value == pytest.approx(0.0025)
    assert not parse_budget("2.5M").latency and parse_budget("2.5M").unit == "macs"  # MACs unchanged


@pytest.mark.parametrize("text", ["2.5h", "2.5 msec", "0ms", "-1us", "ms"])
def test_bad_latency_units_fail_with_one_line(text):
    with pytest.raises(BudgetError, match="^budget: .*2.5ms, 2500us, 0.0025s") as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_fit_recovers_non_negative_weights():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(40, 4))) * [1.0, 1e6, 1e3, 5.0]
    w = np.array([2e-5, 3e-11, 0.0, 1e-6])
    got = fit_latency(x, x @ w)
    assert np.all(got >= 0) and np.allclose(got, w, rtol=1e-6, atol=1e-15)


def test_profile_file_round_trips(device_profile, tiny_ckpt):
    data = json.loads(device_profile.read_text())
    prof = DeviceProfile.load(device_profile)
    assert prof.path == str(device_profile.resolve()) and prof.sha256 == file_digest(device_profile)
    assert prof.batch_sizes == (1, 2, 8) and prof.batch_size == 8 and data["batch_sizes"] == [1, 2, 8]
    assert data["version"] == 2 and data["sub_batch_sizes"] == [2]
    # resnet_cifar has no depthwise convolutions: one image runs contiguous, two or more channels-last.
    assert data["layouts"] == {"1": "contiguous", "2": "channels_last", "8": "channels_last"}
    fit = prof.call_fit(None)
    assert fit.batch_sizes == (2, 8) and fit.note is None  # batch 1 runs in another layout: not in the fit
    assert prof.call_fit(1).batch_sizes == (1,) and prof.call_fit(1).note is None  # batch 1: per image, exact
    assert data["call_fit"]["batch_sizes"] == [2, 8] and set(data["call_fit"]["errors"]) == {"2", "8"}
    assert data["call_fit"]["errors"]["8"] == pytest.approx(data["fit"]["8"]["train"])  # the line goes through B
    assert data["threads"] == 1 and data["torch"] and data["machine"]["cpu_count"] >= 1
    assert data["checkpoint_sha256"] == file_digest(tiny_ckpt)
    for b in ("1", "2", "8"):
        fit = data["fit"][b]
        assert fit["held_out_archs"] >= 1 and fit["held_out"]["rows"] >= 1 and fit["train"]["mean_abs"] >= 0
        assert np.all(np.array(data["models"][b]["body"]) >= 0) and np.all(np.array(data["models"][b]["head"]) >= 0)
    again = DeviceProfile.from_json(json.loads(json.dumps(data)))  # what was written is what is read
    for b in prof.batch_sizes:
        assert np.array_equal(again.models[b].body, prof.models[b].body)
        assert np.array_equal(again.models[b].head, prof.models[b].head)
    assert not list(device_profile.parent.glob(".*.tmp"))  # atomic write: no temporary left


def test_predicted_latency_is_monotone_in_the_exit(device_profile, tiny_ckpt):
    net, meta = load_supernet(tiny_ckpt)
    prof = DeviceProfile.load(device_profile)
    space = net.space
    archs = [space.largest(), space.smallest()] + [space.sample(make_generator(5, i)) for i in range(4)]
    for b in prof.batch_sizes:
        costs = LatencyCosts(net, prof, b)
        for a in archs:
            a = a.with_all_exits()
            secs = costs.exit_seconds(a)
            assert len(secs) == a.num_stages and all(s > 0 for s in secs)
            assert all(later > earlier for earlier, later in zip(secs, secs[1:]))
            # The calibration's cumulative costs are the same numbers, in nanoseconds.
            assert forced_exit_costs(*costs(a), a.exits, costs.calls(a)) == pytest.approx([s * 1e9 for s in secs],
                                                                                         abs=2 * len(secs))
            # Every image leaving at one exit: the batch-b feature model's prediction (rounding aside).
            model = prof.models[b].exit_seconds(stage_features(net, a), a.exits)
            assert secs == pytest.approx(model, abs=4e-9 * len(secs))
            calls = costs.exit_call_seconds(a)
            assert all(0 <= c <= t for c, t in zip(calls, secs)) and (b > 1 or max(calls) == 0)
        assert costs.exit_seconds(space.largest())[-1] > costs.exit_seconds(space.smallest())[-1]


def _budget_between(device_profile: Path, ckpt: Path, frac: float) -> str:
    """A latency budget ``frac`` of the way from the smallest subnet's first exit to the largest's last."""
    net, _ = load_supernet(ckpt)
    costs = LatencyCosts(net, DeviceProfile.load(device_profile))
    lo, hi = costs.exit_seconds(net.space.smallest())[0], costs.exit_seconds(net.space.largest())[-1]
    return f"{(lo + frac * (hi - lo)) * 1e6:.4f}us"


def test_latency_budget_search_end_to_end(device_profile, tiny_ckpt, make_cfg, tmp_path):
    budget = _budget_between(device_profile, tiny_ckpt, 0.4)
    out = tmp_path / "run"
    res = search(make_cfg(f"ckpt={tiny_ckpt}", f"budget={budget}", f"device_profile={device_profile}"), out, quiet())
    assert json.loads((out / "result.json").read_text()) == res
    assert res["budget_unit"] == "seconds" and res["budget"] == pytest.approx(parse_budget(budget).value)
    lat = res["latency"]
    assert lat["device_profile"] == str(device_profile.resolve())
    assert lat["device_profile_sha256"] == file_digest(device_profile) and lat["batch_size"] == 8
    assert res["expected_latency"] == lat["expected"] <= res["budget"] * (1 + 1e-9)
    assert len(lat["exit_latency"]) == len(lat["exit_call_latency"]) == len(res["exit_rates"]) \
        == sum(res["subnet"]["exits"])
    assert lat["call_fit"] == {"batch_sizes": [2, 8], "note": None}
    # The per-call model's rule at the search's exit rates.
    per_image = [t - c for t, c in zip(lat["exit_latency"], lat["exit_call_latency"])]
    assert res["expected_latency"] == pytest.approx(expected_cost(res["exit_rates"], per_image,
                                                                  lat["exit_call_latency"]), rel=1e-6)
    # MACs stay MACs: the chosen subnet's exits and the policy's average.
    net, _ = load_supernet(tiny_ckpt)
    assert res["exit_macs"] == net.macs(net.space.from_dict(res["subnet"]))
    assert res["expected_macs"] == pytest.approx(sum(r * m for r, m in zip(res["exit_rates"], res["exit_macs"])))
    assert "expected_latency" in res["cross_fitted"]
    header = (out / "pareto.csv").read_text().splitlines()[0]
    assert header == "kind,expected_latency,val_accuracy,subnet" and (out / "pareto.png").stat().st_size > 0


def test_mac_budget_with_a_profile_records_predicted_latency(device_profile, tiny_ckpt, make_cfg, tmp_path):
    res = search(make_cfg(f"ckpt={tiny_ckpt}", "budget=0.5x", f"device_profile={device_profile}",
                          "latency_batch_size=1"), tmp_path / "run", quiet())
    assert res["budget_unit"] == "macs" and res["expected_macs"] <= res["budget"]
    assert res["latency"]["batch_size"] == 1 and res["latency"]["budget"] is None and res["expected_latency"] > 0


def run_search_main(tmp_path: Path, monkeypatch, capsys, *args: str) -> str:
    """enas4d-search's entry point in this process; asserts exit 2 and one stderr line, returns it."""
    from enas4d.search.cli import main

    monkeypatch.setattr(sys, "argv", ["enas4d-search", *args, f"hydra.run.dir={tmp_path / 'run'}",
                                      f"cache_dir={tmp_path / 'cache'}", "progress=false", "bn.images=48"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    assert e.value.code == 2, out.err
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.err + out.out, out.err
    assert not (tmp_path / "run" / "result.json").exists()
    return lines[0]


def test_latency_budget_without_profile_is_one_line(tmp_path, monkeypatch, capsys, tiny_ckpt):
    line = run_search_main(tmp_path, monkeypatch, capsys, f"ckpt={tiny_ckpt}", "budget=2.5ms")
    assert line.startswith("enas4d-search: error: device_profile: missing; budget=2.5ms is a latency")


def test_profile_of_another_supernet_is_one_line(tmp_path, monkeypatch, capsys, device_profile):
    other = write_checkpoint(tmp_path / "three_exits.ckpt", num_stages=3)
    line = run_search_main(tmp_path, monkeypatch, capsys, f"ckpt={other}", "budget=2.5ms",
                           f"device_profile={device_profile}")
    assert line.startswith("enas4d-search: error: device_profile: ") and "was measured for supernet" in line


@pytest.mark.parametrize("args, start", [
    (["budget=2.5hours"], "budget: '2.5hours' is not a number"),
    (["budget=2.5ms", "device_profile={tmp}/nothing.json"], "device_profile: no device profile at"),
    (["budget=2.5ms", "device_profile={ckpt}"], "device_profile: "),
    (["budget=2.5ms", "device_profile={profile}", "latency_batch_size=3"],
     "latency_batch_size: 3 was not profiled"),
    (["budget=1ns", "device_profile={profile}"], "budget: 1ns/image is below the smallest predicted latency"),
])
def test_bad_latency_input_is_one_line(tmp_path, monkeypatch, capsys, tiny_ckpt, device_profile, args, start):
    args = [a.format(tmp=tmp_path, ckpt=tiny_ckpt, profile=device_profile) for a in args]
    line = run_search_main(tmp_path, monkeypatch, capsys, f"ckpt={tiny_ckpt}", *args)
    assert line.startswith(f"enas4d-search: error: {start}")


def test_predicted_vs_measured(device_profile, tiny_ckpt):
    net, meta = load_supernet(tiny_ckpt)
    s = net.space.largest()
    export_meta = {"supernet": meta.supernet, "space": meta.space, "subnet": s.to_dict()}
    costs = LatencyCosts(net, DeviceProfile.load(device_profile), 8)
    exits, calls = costs.exit_seconds(s), costs.exit_call_seconds(s)  # whole nanoseconds
    got = predicted_vs_measured(device_profile, export_meta, [0.25, 0.75], 1e-3, 8)
    # Both exits taken: each image pays its exit's per-image part, the batch every stage's call once.
    assert got["predicted"] == pytest.approx(0.25 * (exits[0] - calls[0]) + 0.75 * (exits[1] - calls[1]) + calls[1],
                                             abs=3e-9)
    # Stage 2's call is paid in full although only 3/4 of the images reach it.
    assert got["predicted"] >= 0.25 * exits[0] + 0.75 * exits[1] - 3e-9
    assert got["exit_call_latency"] == pytest.approx(calls, abs=1e-12) and got["call_fit"]["note"] is None
    assert predicted_vs_measured(device_profile, export_meta, [1.0, 0.0], 1e-3, 8)["predicted"] == \
        pytest.approx(exits[0], abs=3e-9)  # nobody reaches stage 2: it is skipped
    assert got["ratio"] == pytest.approx(1e-3 / got["predicted"])
    assert got["exit_latency"] == pytest.approx(exits, abs=3e-9)
    assert got["same_machine"] and got["device_profile_sha256"] == file_digest(device_profile)
    with pytest.raises(LatencyError, match="^batch_size: 64 was not profiled"):
        predicted_vs_measured(device_profile, export_meta, [0.25, 0.75], 1e-3, 64)
    with pytest.raises(LatencyError, match="^exit_rates: expected 2 fractions"):
        predicted_vs_measured(device_profile, export_meta, [1.0], 1e-3, 8)
    with pytest.raises(LatencyError, match="^profile: .* was measured for supernet"):
        predicted_vs_measured(device_profile, {**export_meta, "supernet": {**meta.supernet, "num_classes": 3}},
                              [0.25, 0.75], 1e-3, 8)


def test_stage_features_follow_the_architecture(tiny_ckpt):
    net, _ = load_supernet(tiny_ckpt)
    small, large = stage_features(net, net.space.smallest()), stage_features(net, net.space.largest())
    assert small.body.shape == large.body.shape == (2, 8) and small.head.shape == (2, 3)
    assert np.all(large.body[:, 1:] >= small.body[:, 1:]) and np.all(large.body[:, 1] > small.body[:, 1])


@pytest.mark.parametrize("args, start", [
    ([], "ckpt: missing"),
    (["ckpt={ckpt}", "clock=sundial"], "clock: 'sundial' not allowed; allowed values: ['wall', 'cpu']"),
    (["ckpt={ckpt}", "batch_size=0"], "batch_size: 0 not allowed; allowed values: integers >= 1"),
    (["ckpt={ckpt}", "sub_batch_sizes=[4,64]"], "sub_batch_sizes: [4, 64] not allowed; allowed values: a list of "
                                                "integers from 1 to batch_size - 1 (63)"),
    (["ckpt={ckpt}", "sub_batch_sizes=4"], "sub_batch_sizes: 4 not allowed"),
    (["ckpt={tmp}/none.ckpt"], "ckpt: no checkpoint file at"),
])
def test_profile_bad_input_is_one_line(tmp_path, monkeypatch, capsys, tiny_ckpt, args, start):
    args = [a.format(ckpt=tiny_ckpt, tmp=tmp_path) for a in args]
    monkeypatch.setattr(sys, "argv", ["enas4d-profile", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        profile_main()
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"enas4d-profile: error: {start}"), out.err
    assert not (tmp_path / "run" / "profile.json").exists()


def test_profile_help_names_the_app_and_shows_its_options():
    proc = subprocess.run([sys.executable, "-m", "enas4d.profile", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("enas4d-profile: ")
    assert "Examples:" in proc.stdout and "== Config ==" in proc.stdout and "task_name: profile" in proc.stdout


# ------------------------------------------------------- export and evaluate of a latency search
EVAL_FAST = ["batch_sizes=[1,4]", "timing_images=8", "repeats=1", "threads=1", "reference=false"]


@pytest.fixture(scope="module")
def latency_export(device_profile, tiny_ckpt, tmp_path_factory) -> tuple[Path, dict]:
    """A latency-budget search of the tiny checkpoint (search settings of ``make_cfg``), exported
    (TorchScript only): (export folder, result.json content)."""
    from enas4d.export.cli import export
    from enas4d.search.cli import CONF_DIR as SEARCH_CONF

    from ..export.helpers import compose_cfg

    root = tmp_path_factory.mktemp("latency_export")
    budget = _budget_between(device_profile, tiny_ckpt, 0.4)
    with initialize_config_dir(config_dir=str(SEARCH_CONF), version_base="1.3"):
        cfg = compose("search", overrides=[
            f"cache_dir={root / 'cache'}", "evaluations=3", "static_evaluations=2", "population=2", "bn.images=48",
            "bn.batch_size=24", "front_levels=8", "progress=false", "threads=1", "predictor.holdout=0",
            f"ckpt={tiny_ckpt}", f"budget={budget}", f"device_profile={device_profile}"])
    res = search(cfg, root / "search", quiet())
    out = root / "export"
    export(compose_cfg("export", f"result={root / 'search' / 'result.json'}", f"out={out}", "onnx=false"), quiet())
    return out, res


def evaluate_cfg(model: Path, out: Path, *overrides: str):
    from ..export.helpers import compose_cfg

    return compose_cfg("evaluate", f"model={model}", f"out={out}", *EVAL_FAST, *overrides)


def test_export_of_a_latency_search_records_its_prediction(latency_export, device_profile):
    out, res = latency_export
    meta = json.loads((out / "subnet.json").read_text())
    lat = meta["latency"]
    assert lat["budget_unit"] == "seconds" and lat["budget"] == res["budget"] > 0
    assert lat["expected"] == res["expected_latency"] == res["latency"]["expected"] > 0
    assert lat["exit_latency"] == res["latency"]["exit_latency"] and len(lat["exit_latency"]) == len(meta["thresholds"])
    assert lat["batch_size"] == 8 == DeviceProfile.load(device_profile).batch_size
    assert lat["device_profile"] == str(device_profile.resolve())
    assert lat["device_profile_sha256"] == file_digest(device_profile)
    assert lat["threads"] == 1 and lat["runtime"] == "torchscript" and lat["machine"]["hostname"]
    assert meta["search"]["budget_unit"] == "seconds" and meta["search"]["expected_latency"] == lat["expected"]
    assert "Predicted latency" in (out / "README.md").read_text()


def test_export_refuses_a_malformed_latency_block(latency_export, tmp_path):
    from enas4d.export.exporter import ExportError, latency_info, load_result
    from enas4d.search.result import SearchResult

    _, res = latency_export
    assert latency_info(SearchResult.from_dict({**res, "latency": None}), 2) is None
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**res, "latency": {**res["latency"], "expected": -1.0}}))
    with pytest.raises(ExportError, match=r"^result: latency.expected=-1.0 in '.*r.json' is not allowed"):
        load_result(path)
    with pytest.raises(ExportError, match=r"^result: latency.exit_latency=.* allowed values: 3 cumulative"):
        latency_info(SearchResult.from_dict(res), 3)


def test_evaluate_reports_predicted_and_measured_latency(latency_export, device_profile, tmp_path):
    out, res = latency_export
    console = Console(file=io.StringIO(), width=400)
    m = evaluate(evaluate_cfg(out, tmp_path / "m.json"), console)
    assert json.loads((tmp_path / "m.json").read_text()) == m
    lat = m["latency"]
    assert lat["batch_size"] == 8 and set(m["throughput"]) == {"1", "4"}  # the batch sizes asked for, unchanged
    assert lat["predicted"] > 0 and lat["measured"] > 0
    assert lat["ratio"] == pytest.approx(lat["measured"] / lat["predicted"])
    assert len(lat["per_pass"]) == lat["repeats"] == 1 and lat["measured"] == lat["per_pass"][0]
    assert lat["images"] == 8 and lat["clock"] == "wall"
    per_image = [t - c for t, c in zip(lat["exit_latency"], lat["exit_call_latency"])]
    assert lat["predicted"] == pytest.approx(expected_cost(lat["exit_rates"], per_image, lat["exit_call_latency"]))
    assert lat["exit_latency"] == pytest.approx(res["latency"]["exit_latency"], abs=3e-9)
    assert lat["exit_call_latency"] == pytest.approx(res["latency"]["exit_call_latency"], abs=3e-9)
    assert sum(lat["exit_rates"]) == pytest.approx(1.0) and lat["predicted_by"] == "device_profile"
    assert lat["device_profile"] == str(device_profile.resolve()) and lat["same_machine"]
    assert lat["search_predicted"] == res["expected_latency"] and lat["budget"] == res["budget"]
    assert lat["measured_vs_budget"] == pytest.approx(lat["measured"] / res["budget"])
    text = console.file.getvalue()
    assert "latency at batch 8 (the batch size of the export's prediction" in text and "measured / predicted = " in text and "measured / budget = " in text


def test_evaluate_without_a_profile_changes_nothing_and_takes_device_profile(latency_export, device_profile, tmp_path):
    out, _ = latency_export
    shutil.copytree(out, tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "subnet.json").read_text())
    meta["latency"] = None  # as a MAC-budget search without a device profile exports it
    (tmp_path / "export" / "subnet.json").write_text(json.dumps(meta))
    plain = evaluate(evaluate_cfg(tmp_path / "export", tmp_path / "a.json"), quiet())
    assert plain["latency"] is None and set(plain["throughput"]) == {"1", "4"}
    given = evaluate(evaluate_cfg(tmp_path / "export", tmp_path / "b.json", f"device_profile={device_profile}",
                                  "latency_batch_size=1"), quiet())
    lat = given["latency"]
    assert lat["batch_size"] == 1 and lat["batch_from"] == "latency_batch_size" and lat["images"] == 8
    assert lat["ratio"] == pytest.approx(lat["measured"] / lat["predicted"]) and lat["predicted"] > 0
    assert lat["search_predicted"] is None and lat["budget"] is None and lat["measured_vs_budget"] is None


def test_evaluate_predicts_from_the_export_when_its_profile_is_gone(latency_export, tmp_path):
    out, res = latency_export
    shutil.copytree(out, tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "subnet.json").read_text())
    meta["latency"]["device_profile"] = str(tmp_path / "moved.json")
    (tmp_path / "export" / "subnet.json").write_text(json.dumps(meta))
    lat = evaluate(evaluate_cfg(tmp_path / "export", tmp_path / "m.json"), quiet())["latency"]
    assert lat["predicted_by"] == "export" and lat["batch_size"] == 8
    assert lat["exit_latency"] == res["latency"]["exit_latency"]
    assert lat["exit_call_latency"] == res["latency"]["exit_call_latency"] and lat["call_fit"]["note"] is None
    per_image = [t - c for t, c in zip(lat["exit_latency"], lat["exit_call_latency"])]
    assert lat["predicted"] == pytest.approx(expected_cost(lat["exit_rates"], per_image, lat["exit_call_latency"]))
    assert lat["ratio"] == pytest.approx(lat["measured"] / lat["predicted"])


def test_evaluate_predicts_per_image_from_an_export_before_the_per_call_model(latency_export, tmp_path):
    out, res = latency_export
    shutil.copytree(out, tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "subnet.json").read_text())
    meta["latency"]["device_profile"] = str(tmp_path / "moved.json")
    del meta["latency"]["exit_call_latency"], meta["latency"]["call_fit"]  # as exported before this change
    (tmp_path / "export" / "subnet.json").write_text(json.dumps(meta))
    console = Console(file=io.StringIO(), width=400)
    lat = evaluate(evaluate_cfg(tmp_path / "export", tmp_path / "m.json"), console)["latency"]
    assert lat["predicted_by"] == "export" and lat["exit_call_latency"] is None
    assert lat["predicted"] == pytest.approx(sum(r * t for r, t in zip(lat["exit_rates"], lat["exit_latency"])))
    assert "note: the export records no per-call latencies" in console.file.getvalue()


def run_evaluate_main(tmp_path: Path, monkeypatch, capsys, *args: str) -> str:
    """enas4d-evaluate's entry point in this process; asserts exit 2, one stderr line and no metrics.json."""
    from enas4d.export.evaluate import main

    monkeypatch.setattr(sys, "argv", ["enas4d-evaluate", *args, f"out={tmp_path / 'm.json'}", *EVAL_FAST,
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    assert e.value.code == 2, out.err
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.err + out.out, out.err
    assert not (tmp_path / "m.json").exists()
    return lines[0]


@pytest.mark.parametrize("args, start", [
    (["device_profile={other}"], "device_profile: {other} was measured for supernet"),
    (["device_profile={tmp}/none.json"], "device_profile: no device profile at"),
    (["latency_batch_size=3"], "latency_batch_size: 3 was not profiled"),
])
def test_evaluate_bad_latency_input_is_one_line(latency_export, device_profile, tmp_path, monkeypatch, capsys,
                                                args, start):
    other = json.loads(device_profile.read_text())
    other["supernet"]["fingerprint"] = "0" * 16  # a profile of another supernet architecture
    (tmp_path / "other.json").write_text(json.dumps(other))
    fmt = dict(other=tmp_path / "other.json", tmp=tmp_path)
    line = run_evaluate_main(tmp_path, monkeypatch, capsys, f"model={latency_export[0]}",
                             *[a.format(**fmt) for a in args])
    assert line.startswith(f"enas4d-evaluate: error: {start.format(**fmt)}"), line


# ------------------------------------------------- the per-call model: a_k + b_k * n per stage call
def test_expected_cost_by_hand():
    """Per-stage costs a_k + b_k * n on n of B = 64 images, computed by hand, including a stage nobody reaches."""
    B = 64
    a, b = [6400.0, 12800.0, 3200.0], [2000.0, 3000.0, 1000.0]  # ns per call, ns per image (heads in them)
    exit_cost = list(itertools.accumulate(b))  # per-image part of each exit: 2000, 5000, 6000
    exit_call = [v / B for v in itertools.accumulate(a)]  # per-call part per image: 100, 300, 350
    # reach = 1, 0.25, 0.1: (1/64) * [6400 + 2000*64 + 12800 + 3000*64*0.25 + 3200 + 1000*64*0.1]
    assert expected_cost([0.75, 0.15, 0.1], exit_cost, exit_call) == pytest.approx(
        (6400 + 2000 * 64 + 12800 + 3000 * 16 + 3200 + 1000 * 6.4) / 64)  # 3200 ns
    # Nobody reaches stage 3 (reach 0): it is skipped, its call costs nothing.
    assert expected_cost([0.75, 0.25, 0.0], exit_cost, exit_call) == pytest.approx(
        (6400 + 2000 * 64 + 12800 + 3000 * 16) / 64)  # 3050 ns
    # Everyone leaves at exit 1: the cost of forcing them all out there, stage 1 alone.
    assert expected_cost([1.0, 0.0, 0.0], exit_cost, exit_call) == pytest.approx(a[0] / B + b[0])
    # Counts give totals (the calibration's integers): 48, 10, 6 of 64 images.
    assert expected_cost([48, 10, 6], [2000, 5000, 6000], [100, 300, 350]) == 48 * 2000 + 10 * 5000 + 6 * 6000 + 64 * 350
    # Without per-call parts it is the plain average of the exits' costs (MACs).
    assert expected_cost([0.5, 0.5, 0.0], [10, 30, 60]) == 20


def test_fit_per_call_recovers_a_line_through_batch_b():
    a, b = np.array([3e-4, 1e-4, 0.0]), np.array([3e-5, 5e-5, 2e-5])
    on_line = {m: a / m + b for m in (2, 8, 64)}
    got_a, got_b = fit_per_call(on_line, 64)
    assert np.allclose(got_a, a, atol=1e-15) and np.allclose(got_b, b, atol=1e-15)
    # Off the line: it still goes through batch 64 (forcing the whole batch out at one exit is unchanged).
    noisy = {2: on_line[2] * [1.2, 0.9, 1.0], 8: on_line[8] * [0.9, 1.1, 1.0], 64: on_line[64]}
    got_a, got_b = fit_per_call(noisy, 64)
    assert np.allclose(got_a + 64 * got_b, 64 * on_line[64]) and np.all(got_a >= 0) and np.all(got_b >= 0)
    # Two batch sizes: the line through both; one: per image only (a = 0).
    got_a, got_b = fit_per_call({1: a + b, 64: on_line[64]}, 64)
    assert np.allclose(got_a, a, atol=1e-15) and np.allclose(got_b, b, atol=1e-15)
    got_a, got_b = fit_per_call({64: on_line[64]}, 64)
    assert np.all(got_a == 0) and np.allclose(got_b, on_line[64])
    # A small batch costlier per image than the per-call time at 64 allows: a <= all of it, b >= 0.
    got_a, got_b = fit_per_call({2: np.array([1.0]), 64: np.array([1e-3])}, 64)
    assert got_b[0] == 0 and got_a[0] == pytest.approx(64e-3)


def synthetic_profile(per_call: float, per_image: float, sizes=(1, 8, 64), layouts=True, version=2) -> dict:
    """A profile whose only weight is the stage body's constant: every stage costs per_call + per_image * n
    seconds on n images (heads cost nothing); batch 1 runs in another layout (as for resnet_cifar)."""
    data = {"format": PROFILE_FORMAT, "version": version, "machine": {}, "torch": "", "threads": 1, "clock": "cpu",
            "runtime": "torchscript", "supernet": {"fingerprint": "0" * 16}, "batch_sizes": list(sizes),
            "features": {"body": list(BODY_FEATURES), "head": list(HEAD_FEATURES)},
            "models": {str(m): {"body": [per_call / m + per_image] + [0.0] * (len(BODY_FEATURES) - 1),
                                "head": [0.0] * len(HEAD_FEATURES)} for m in sizes}, "fit": {}}
    if layouts:
        data["layouts"] = {str(m): "contiguous" if m == 1 else "channels_last" for m in sizes}
    return data


def test_latency_costs_follow_the_per_call_model_by_hand(tiny_ckpt):
    net, _ = load_supernet(tiny_ckpt)
    s = net.space.largest()  # 2 stages, both exits
    a, b = 6.4e-6, 2e-6  # per call, per image: a / 64 = 100 ns, b = 2000 ns
    # Batch 1 is off the line (another memory layout): the fit leaves it out.
    data = synthetic_profile(a, b)
    data["models"]["1"]["body"][0] = 1e-6
    costs = LatencyCosts(net, DeviceProfile.from_json(data), 64)
    assert costs.fit.batch_sizes == (8, 64) and costs.fit.note is None
    assert costs(s) == ([2000, 2000], [0, 0]) and costs.calls(s) == ([100, 100], [0, 0])
    assert costs.exit_seconds(s) == pytest.approx([2.1e-6, 4.2e-6])
    assert costs.exit_call_seconds(s) == pytest.approx([1e-7, 2e-7])
    # (1/64) * [a + 64 b + a + 64 b * reach_1]
    assert costs.expected_seconds(s, [0.75, 0.25]) == pytest.approx((2 * a + 64 * b * 1.25) / 64)  # 2.7us
    assert costs.expected_seconds(s, [1.0, 0.0]) == pytest.approx((a + 64 * b) / 64)  # stage 2 skipped: 2.1us
    # The search's calibration charges the same: 3 of 4 validation images leave at exit 1.
    table = ExitTable(np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool), np.array([[.9, .8, .7, .1], [1, 1, 1, 1]],
                                                                             np.float32))
    pol = simulate(table, (True, True), (0.5, 0.0), *costs(s), costs.calls(s))
    assert pol.counts == (3, 1) and pol.expected_macs == pytest.approx(2700) and pol.exit_macs == (2100, 4200)
    # At batch 1 the per-image model is exact: each image pays every stage it reaches.
    one = LatencyCosts(net, DeviceProfile.from_json(data), 1)
    assert one.fit.batch_sizes == (1,) and one.calls(s) == ([0, 0], [0, 0])
    assert one.expected_seconds(s, [0.75, 0.25]) == pytest.approx(1e-6 * 1.25)


def test_profiles_before_the_per_call_model_still_load(device_profile, tiny_ckpt):
    net, meta = load_supernet(tiny_ckpt)
    s = net.space.largest()
    # Version 1: batch 1 and B, no layouts: refitted from those two, with a note.
    old = synthetic_profile(6.4e-6, 2e-6, sizes=(1, 64), layouts=False, version=1)
    prof = DeviceProfile.from_json(old, path="old.json")
    fit = prof.call_fit(None)
    assert fit.batch_sizes == (1, 64) and "old.json predates the per-call latency fit" in fit.note
    costs = LatencyCosts(net, prof)
    assert costs(s) == ([2000, 2000], [0, 0]) and costs.calls(s) == ([100, 100], [0, 0])
    # Version 2 without sub-batches (sub_batch_sizes=[]): batch 1 is in another layout, used with a note.
    no_subs = DeviceProfile.from_json(synthetic_profile(6.4e-6, 2e-6, sizes=(1, 64)), path="p.json").call_fit(None)
    assert no_subs.batch_sizes == (1, 64) and "p.json timed no smaller batch in batch 64's memory layout" in no_subs.note
    # One batch size only: per image (the old model), with a note.
    single = DeviceProfile.from_json(synthetic_profile(6.4e-6, 2e-6, sizes=(64,), layouts=False, version=1))
    assert "no batch size below 64: predicting per image" in single.call_fit(None).note
    costs = LatencyCosts(net, single)
    assert costs.calls(s) == ([0, 0], [0, 0]) and costs(s) == ([2100, 2100], [0, 0])
    assert costs.expected_seconds(s, [0.75, 0.25]) == pytest.approx(0.75 * 2.1e-6 + 0.25 * 4.2e-6)
    # A real version-1 file (what enas4d-profile wrote before): batch 1 and 8, no sub-batches, no layouts.
    data = json.loads(device_profile.read_text())
    for key in ("layouts", "sub_batch_sizes", "call_fit"):
        del data[key]
    data.update(version=1, batch_sizes=[1, 8])
    del data["models"]["2"], data["fit"]["2"]
    for rec in data["measurements"]:
        del rec["seconds"]["2"]
    path = device_profile.parent / "v1.json"
    path.write_text(json.dumps(data))
    export_meta = {"supernet": meta.supernet, "space": meta.space, "subnet": s.to_dict()}
    got = predicted_vs_measured(path, export_meta, [0.5, 0.5], 1e-3, 8)
    assert got["call_fit"]["batch_sizes"] == [1, 8] and "predates the per-call latency fit" in got["call_fit"]["note"]
    assert got["predicted"] > 0 and call_fit_errors(DeviceProfile.load(path))["batch_sizes"] == [1, 8]
    with pytest.raises(LatencyError, match="has version 3; this enas4d reads"):
        DeviceProfile.from_json({**data, "version": 3})


def brute_force_with_calls(table: ExitTable, body, heads, calls, budget: float) -> tuple[int, int] | None:
    """(correct, total) of the best policy by the per-stage rule written out: stage k costs
    a_k [n_k > 0] + b_k n_k on the n_k images reaching it (``calls``: a_k per image of the batch), every exit
    subset and threshold (inf: never exit here) tried."""
    K, N = table.correct.shape
    best = None
    for bits in itertools.product((False, True), repeat=K - 1):
        exits = bits + (True,)
        ks = [k for k in range(K - 1) if exits[k]]
        for combo in itertools.product(*[list(np.unique(table.conf[k]).astype(np.float64)) + [np.inf] for k in ks]):
            th = dict(zip(ks, combo))
            where = np.full(N, K - 1)
            for i in range(N):
                where[i] = next((k for k in ks if table.conf[k, i] >= th[k]), K - 1)
            correct = int(table.correct[where, np.arange(N)].sum())
            total = 0
            for k in range(K):
                n = int((where >= k).sum())  # images reaching stage k
                a = calls[0][k] + (calls[1][k] if exits[k] else 0)
                per = body[k] + (heads[k] if exits[k] else 0)
                total += N * a * (n > 0) + per * n  # a / B per image of the batch, N images
            if total <= budget * N and (best is None or (correct, -total) > best):
                best = (correct, -total)
    return None if best is None else (best[0], -best[1])


@pytest.mark.parametrize("K,N,seed,levels", [(2, 30, 1, 5), (3, 14, 2, None), (3, 20, 4, 3)])
def test_calibration_with_per_call_costs_matches_brute_force(K, N, seed, levels):
    table = random_table(K, N, seed, levels)
    body, heads = [100, 150, 200][:K], [10, 20, 30][:K]
    calls = ([400, 300, 350][:K], [5, 10, 15][:K])  # a large per-call part: skipping the last stages pays
    full = forced_exit_costs(body, heads, (True,) * K, calls)[-1]
    for frac in (0.25, 0.4, 0.55, 0.7, 0.9, 1.2):
        ref = brute_force_with_calls(table, body, heads, calls, frac * full)
        got = calibrate(table, body, heads, frac * full, grid=None, calls=calls)
        assert (None if got is None else (got.correct, got.total_macs)) == ref, frac
        if got is not None:
            assert got.expected_macs <= frac * full
    # The trade-off front charges the same: its cheapest point is everyone out at exit 1, stage 1 alone.
    front, _ = tradeoff(table, body, heads, True, 8, calls)
    assert front[0, 0] == pytest.approx(body[0] + heads[0] + calls[0][0] + calls[1][0])
