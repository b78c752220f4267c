"""Latency budgets: enas4d-profile's device profile, its predictions, and latency-budget searches on digits."""

from __future__ import annotations

import io
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
from enas4d.search.calibrate import exit_costs
from enas4d.search.cli import search
from enas4d.search.latency import (DeviceProfile, LatencyCosts, LatencyError, fit_latency, predicted_vs_measured,
                                   stage_features)
from enas4d.utils.files import file_digest
from enas4d.utils.seed import make_generator

from .conftest import write_checkpoint


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def profile_cfg(*overrides: str):
    """conf/profile.yaml, quick (6 architectures, 2 repeats), batch 8, one thread."""
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
    assert prof.batch_sizes == (1, 8) and prof.batch_size == 8 and data["batch_sizes"] == [1, 8]
    assert data["threads"] == 1 and data["torch"] and data["machine"]["cpu_count"] >= 1
    assert data["checkpoint_sha256"] == file_digest(tiny_ckpt)
    for b in ("1", "8"):
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
        costs = LatencyCosts(net, prof.model(b))
        for a in archs:
            a = a.with_all_exits()
            secs = costs.exit_seconds(a)
            assert len(secs) == a.num_stages and all(s > 0 for s in secs)
            assert all(later > earlier for earlier, later in zip(secs, secs[1:]))
            # The calibration's cumulative costs are the same numbers, in nanoseconds.
            assert exit_costs(*costs(a), a.exits) == pytest.approx([s * 1e9 for s in secs], abs=len(secs))
        assert costs.exit_seconds(space.largest())[-1] > costs.exit_seconds(space.smallest())[-1]


def _budget_between(device_profile: Path, ckpt: Path, frac: float) -> str:
    """A latency budget ``frac`` of the way from the smallest subnet's first exit to the largest's last."""
    net, _ = load_supernet(ckpt)
    costs = LatencyCosts(net, DeviceProfile.load(device_profile).model(None))
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
    assert len(lat["exit_latency"]) == len(res["exit_rates"]) == sum(res["subnet"]["exits"])
    assert res["expected_latency"] == pytest.approx(sum(r * t for r, t in zip(res["exit_rates"], lat["exit_latency"])),
                                                    rel=1e-6)
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
    exits = LatencyCosts(net, DeviceProfile.load(device_profile).model(8)).exit_seconds(s)  # whole nanoseconds
    got = predicted_vs_measured(device_profile, export_meta, [0.25, 0.75], 1e-3, 8)
    assert got["predicted"] == pytest.approx(0.25 * exits[0] + 0.75 * exits[1], abs=3e-9)
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


def test_export_refuses_a_malformed_latency_block(latency_export):
    from enas4d.export.exporter import ExportError, latency_info

    _, res = latency_export
    assert latency_info({**res, "latency": None}, 2) is None
    with pytest.raises(ExportError, match=r"^result: latency.expected=-1.0 in 'r.json' is not allowed"):
        latency_info({**res, "latency": {**res["latency"], "expected": -1.0}}, 2, "r.json")
    with pytest.raises(ExportError, match=r"^result: latency.exit_latency=.* allowed values: 3 cumulative"):
        latency_info(res, 3)


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
    assert lat["predicted"] == pytest.approx(sum(r * t for r, t in zip(lat["exit_rates"], lat["exit_latency"])))
    assert lat["exit_latency"] == pytest.approx(res["latency"]["exit_latency"], abs=3e-9)
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
    assert lat["predicted"] == pytest.approx(sum(r * t for r, t in zip(lat["exit_rates"], lat["exit_latency"])))
    assert lat["ratio"] == pytest.approx(lat["measured"] / lat["predicted"])


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
