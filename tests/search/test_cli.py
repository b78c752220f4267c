"""enas4d-search end to end on a tiny random-weight checkpoint: outputs, reuse, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from enas4d.checkpoint import CheckpointError, load_supernet
from enas4d.search.budget import BudgetError
from enas4d.search.calibrate import confidence
from enas4d.checkpoint import build_datamodule
from enas4d.search.cli import search
from enas4d.search.evaluator import SearchError
from enas4d.search.result import load_result
from enas4d.nn.bn import BNEstimationSet

from .conftest import DATA_CFG, write_checkpoint

REQUIRED = {"subnet", "thresholds", "val_accuracy", "expected_macs", "budget", "exit_rates", "exit_macs",
            "checkpoint", "static_best"}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def reevaluate(ckpt: Path, result: dict) -> tuple[float, float]:
    """Accuracy and average MACs of result.json's subnet + thresholds, recomputed from scratch."""
    net, meta = load_supernet(ckpt)
    dm = build_datamodule(meta, {})
    bn_set = BNEstimationSet(dm.bn_dataloader(num_images=48, batch_size=24))
    s = net.space.from_dict(result["subnet"])
    bn_set.reestimate(net, s)
    net.eval()
    x, y = (torch.cat(t) for t in zip(*dm.val_dataloader()))
    with torch.no_grad():
        outs = net(x)  # one per enabled exit
    macs = net.macs(s)
    undecided = torch.ones(len(y), dtype=torch.bool)
    correct, total = 0, 0
    for out, t, m in zip(outs, result["thresholds"], macs):
        pred, conf = confidence(out, result["confidence"])
        leave = undecided & (conf.double() >= t)
        correct += int((pred[leave] == y[leave]).sum())
        total += int(leave.sum()) * m
        undecided &= ~leave
    assert not undecided.any()
    return correct / len(y), total / len(y)


def test_search_outputs_reproducible_and_cached(tiny_ckpt, make_cfg, tmp_path):
    out = tmp_path / "run1"
    res = search(make_cfg(f"ckpt={tiny_ckpt}", "budget=0.5x"), out, quiet())
    assert REQUIRED <= set(res)
    on = res["subnet"]["exits"]
    n = sum(on)
    assert len(res["thresholds"]) == len(res["exit_rates"]) == len(res["exit_macs"]) == len(res["exit_stages"]) == n
    assert res["thresholds"][-1] == 0.0 and on[-1]
    assert res["expected_macs"] <= res["budget"] == pytest.approx(0.5 * res["largest_macs"])
    assert sum(res["exit_rates"]) == pytest.approx(1.0)
    assert res["bn"] == {"images": 48, "batch_size": 24}  # what export repeats by default
    cf = res["cross_fitted"]  # thresholds scored on the half of the images they were not fitted on
    assert 0.0 <= cf["val_accuracy"] <= 1.0 and res["smallest_macs"] <= cf["expected_macs"] <= res["largest_macs"]
    assert res["expected_macs"] == pytest.approx(sum(r * m for r, m in zip(res["exit_rates"], res["exit_macs"])))
    net, _ = load_supernet(tiny_ckpt)
    assert res["exit_macs"] == net.macs(net.space.from_dict(res["subnet"]))
    # The chosen subnet + thresholds, re-run from scratch, give the reported numbers.
    acc, macs = reevaluate(tiny_ckpt, res)
    assert acc == pytest.approx(res["val_accuracy"]) and macs == pytest.approx(res["expected_macs"])
    sb = res["static_best"]
    assert sb["macs"] <= res["budget"] and sb["subnet"]["exits"] == [False, True]
    assert sb["macs"] == net.macs(net.space.from_dict(sb["subnet"]))[-1]
    assert json.loads((out / "result.json").read_text()) == res
    assert res["version"] == 2 and load_result(out / "result.json").to_dict() == res  # what readers accept
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert {r["kind"] for r in rows} == {"dynamic", "static"}
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["search"]["network_evaluations"] >= 1

    # Same command again (a resumed or repeated search): nothing re-evaluated, same result.
    again = search(make_cfg(f"ckpt={tiny_ckpt}", "budget=0.5x"), tmp_path / "run2", quiet())
    assert again["search"]["network_evaluations"] == 0
    assert (again["subnet"], again["thresholds"], again["val_accuracy"]) == (res["subnet"], res["thresholds"],
                                                                            res["val_accuracy"])
    # Another budget and the random baseline on the same checkpoint reuse the cache.
    other = search(make_cfg(f"ckpt={tiny_ckpt}", "budget=0.3x", "algorithm=random"), tmp_path / "run3", quiet())
    assert other["search"]["algorithm"] == "random" and other["search"]["evaluations"] == 3
    assert other["search"]["cache_hits"] > 0
    assert other["expected_macs"] <= other["budget"]


def test_budget_above_largest_returns_largest(tiny_ckpt, make_cfg, tmp_path):
    console = quiet()
    res = search(make_cfg(f"ckpt={tiny_ckpt}", "budget=10G"), tmp_path / "out", console)
    net, _ = load_supernet(tiny_ckpt)
    assert res["search"]["budget_above_largest"] and res["search"]["evaluations"] == 1
    got = net.space.from_dict(res["subnet"])
    assert got.with_all_exits() == net.space.largest()
    assert "largest" in console.file.getvalue()


def prior_result(out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "result.json").write_text('{"good": true}\n')
    return out


@pytest.mark.parametrize("case", ["missing", "corrupt", "not_a_number", "below_smallest", "split_override",
                                  "empty_val"])
def test_bad_input_fails_with_one_line_and_keeps_old_result(case, tiny_ckpt, make_cfg, tmp_path):
    out = prior_result(tmp_path / "out")
    ckpt, budget, extra, err, match = tiny_ckpt, "0.5x", [], SearchError, ""
    if case == "missing":
        ckpt, err, match = tmp_path / "nope.ckpt", CheckpointError, "no checkpoint file"
    elif case == "corrupt":
        ckpt = tmp_path / "bad.ckpt"
        ckpt.write_bytes(b"not a checkpoint")
        err, match = CheckpointError, "not a readable checkpoint"
    elif case == "not_a_number":
        budget, err, match = "lots", BudgetError, "not a number"
    elif case == "below_smallest":
        net, _ = load_supernet(tiny_ckpt)
        smallest = net.macs(net.space.smallest())[0]
        budget, err, match = "1000", BudgetError, f"smallest achievable {smallest}"
    elif case == "split_override":
        extra, err, match = ["+data_overrides.seed=5"], CheckpointError, "use the validation split the training used"
    elif case == "empty_val":
        ckpt = write_checkpoint(tmp_path / "empty.ckpt", data_cfg={**DATA_CFG, "val_size": 0})
        err, match = CheckpointError, "data: cannot rebuild"
    with pytest.raises(err, match=match) as e:
        search(make_cfg(f"ckpt={ckpt}", f"budget={budget}", *extra), out, quiet())
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(out)) == ["result.json"]
    assert (out / "result.json").read_text() == '{"good": true}\n'


def test_command_line_error_is_one_line_and_nonzero(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "enas4d.search.cli", f"ckpt={tmp_path / 'nope.ckpt'}",
                           "budget=2.5M", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("enas4d-search: error: ckpt: no checkpoint file")
    assert not (tmp_path / "run" / "result.json").exists()


def test_config_budget_forms_and_demo_preset(make_cfg):
    from enas4d.search.budget import parse_budget

    for text, value in (("2.5e6", 2.5e6), ("2500000", 2.5e6), ("2.5M", 2.5e6)):
        assert parse_budget(make_cfg("ckpt=x", f"budget={text}").budget).resolve(1) == value
    demo = make_cfg("ckpt=x", "search=digits_demo")
    assert parse_budget(demo.budget).relative and demo.static_evaluations > 0
