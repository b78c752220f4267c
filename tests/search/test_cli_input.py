"""enas4d-search input checks: missing or mistyped settings are one-line errors (exit 2), and ``device``."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import enas4d
from enas4d.search.budget import BudgetError
from enas4d.search.cli import search
from enas4d.utils.device import resolve_device
from enas4d.search.evaluator import CandidateEvaluator, SearchError
from enas4d.nn.bn import BNEstimationSet


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m enas4d.search.cli ARGS`` with its run folder in tmp_path."""
    return subprocess.run([sys.executable, "-m", "enas4d.search.cli", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)


BAD_COMMANDS = [
    (["budget=2.5M"], "ckpt: missing"),
    (["ckpt=x.ckpt"], "budget: missing; use average MACs per image"),
    (["ckpt=x.ckpt", "budget=2.5M", "evaluations=abc"], "evaluations: 'abc' is not an integer; allowed values: "
                                                         "integers >= 1"),
    (["ckpt=x.ckpt", "budget=2.5M", "static_evaluations=1.5"], "static_evaluations: 1.5 is not an integer"),
    (["ckpt=x.ckpt", "budget=2.5M", "device=gpu"], "device: 'gpu' not allowed; allowed values: auto, cpu, cuda"),
]


@pytest.mark.parametrize("args, start", BAD_COMMANDS)
def test_main_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, start):
    """The Hydra entry point in this process: exit code 2 and one line on stderr, no traceback."""
    from enas4d.search.cli import main

    monkeypatch.setattr(sys, "argv", ["enas4d-search", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    assert e.value.code == 2, out.err
    assert "Traceback" not in out.err + out.out
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"enas4d-search: error: {start}")
    assert not (tmp_path / "run" / "result.json").exists()


def test_command_line_bad_count_is_one_line_exit_2(tmp_path):
    """The same through a real process (what a user sees): ``evaluations=abc``."""
    proc = run_cli(tmp_path, *BAD_COMMANDS[2][0])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"enas4d-search: error: {BAD_COMMANDS[2][1]}")


@pytest.mark.parametrize("override, err, match", [
    ("ckpt=null", SearchError, "ckpt: missing"),
    ("evaluations=2.5", SearchError, "evaluations: 2.5 is not an integer; allowed values: integers >= 1"),
    ("evaluations=0", SearchError, "evaluations: 0 is too small; allowed values: integers >= 1"),
    ("static_evaluations=true", SearchError, "static_evaluations: True is not an integer"),
    ("population=many", SearchError, "population: 'many' is not an integer"),
    ("threads=two", SearchError, r"threads: 'two' is not an integer; allowed values: integers >= 1 or null"),
    ("bn.images=1e3", SearchError, "bn.images: 1000.0 is not an integer"),
    ("controller.samples=x", SearchError, "controller.samples: 'x' is not an integer"),
    ("controller.lr=fast", SearchError, "controller.lr: 'fast' is not a number"),
    ("controller.cost_exponent=0.5", SearchError, r"controller.cost_exponent: must be <= 0"),
    ("mutation_prob=high", SearchError, "mutation_prob: 'high' is not a number"),
    ("progress=maybe", SearchError, "progress: 'maybe' is not a boolean; allowed values: true, false"),
    ("algorithm=annealing", SearchError, "algorithm: 'annealing' not allowed; allowed values: "
                                         r"\['evolution', 'random', 'policy_gradient'\]"),
    ("device=tpu", SearchError, "device: 'tpu' not allowed; allowed values: auto, cpu, cuda, cuda:N"),
])
def test_bad_settings_name_the_field(make_cfg, tmp_path, override, err, match):
    cfg = make_cfg("ckpt=x.ckpt", "budget=2.5M", override)  # x.ckpt does not exist: checks come first
    with pytest.raises(err, match=match) as e:
        search(cfg, tmp_path / "out", Console(file=io.StringIO()))
    assert "\n" not in str(e.value)


def test_missing_budget_in_process(make_cfg, tmp_path):
    with pytest.raises(BudgetError, match="budget: missing"):
        search(make_cfg("ckpt=x.ckpt"), tmp_path / "out", Console(file=io.StringIO()))


def test_resolve_device():
    """The one resolver (enas4d.utils.device), with the search's error type."""
    assert resolve_device("cpu", SearchError) == torch.device("cpu")
    assert resolve_device(" CPU ", SearchError) == torch.device("cpu")
    assert resolve_device("auto", SearchError) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "", 3, None):
        with pytest.raises(SearchError, match="device: .* not allowed; allowed values: auto, cpu, cuda, cuda:N"):
            resolve_device(bad, SearchError)
    if not torch.cuda.is_available():
        with pytest.raises(SearchError, match="device: 'cuda' needs CUDA"):
            resolve_device("cuda", SearchError)
    else:
        with pytest.raises(SearchError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}", SearchError)


def test_evaluation_runs_on_the_network_device():
    """With the network on ``meta``, BN re-estimation and the validation pass run there (CPU batches are
    moved, the subnet's index tensors follow the net); only copying the results back fails (no values)."""
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=2, in_chans=3).to("meta")
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    ev = CandidateEvaluator(net, BNEstimationSet([x]), [(x, y)], "max_softmax", None)
    with pytest.raises(NotImplementedError, match="meta tensor"):  # a device mismatch would be a RuntimeError
        ev.record(net.space.smallest())
