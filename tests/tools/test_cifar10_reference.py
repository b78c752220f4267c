"""tools/cifar10_reference.py: its bad input and its statements of the targets (the run itself is a script)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "cifar10_reference.py"
spec = importlib.util.spec_from_file_location("cifar10_reference", SCRIPT)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)


def _row(frac: float, acc: float, cross: float | None = None, best_static: float | None = None) -> dict:
    return {"budget_fraction": frac, "export_accuracy": acc, "val_accuracy": acc,
            "cross_fitted_accuracy": cross, "best_static_subnet_accuracy": best_static}


def test_targets_say_met_or_not_from_the_numbers():
    rows = [_row(1.0, 0.90), _row(0.25, 0.875, 0.87, 0.85), _row(0.5, 0.899, 0.89, 0.885), _row(0.75, 0.91, 0.9, 0.9)]
    lines = "\n".join(ref.targets(rows))
    assert "at 25% of ResNet-20's MACs: dynamic 87.50% (-2.50 points" in lines and "target >= 87.00%: met" in lines
    assert "target >= 90.00%: not met" in lines  # 50%: 89.9% < 90.0%
    assert "+2.00 points (target >= +1.00: met)" in lines  # cross-fitted 87% vs best static 85%
    assert "+0.50 points (target >= +1.00: not met)" in lines


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys):
    assert ref.main(["--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data: no file at" in err[0]


def test_bad_source_fraction_is_refused(tmp_path, capsys):
    data = tmp_path / "x.npz"
    data.write_bytes(b"")
    assert ref.main(["--data", str(data), "--source-fraction", "1.5", "--out", str(tmp_path / "out")]) == 2
    assert "--source-fraction=1.5 not allowed; allowed: (0, 1)" in capsys.readouterr().err


def test_a_failed_step_names_its_log(tmp_path):
    with pytest.raises(ref.ReferenceError, match=r"failed \(exit 3\): boom \(log: .*step.log\)"):
        ref.run(["bash", "-c", "echo boom; exit 3"], tmp_path / "step.log")


@pytest.mark.parametrize("plan, args, message", [
    ('{"quick": false, "transform": "split"}', ["--transform", "grow"], "was made with --transform split"),
    ('{"quick": false, "transform": "grow", "finetune_set": []}', ["--finetune-set", "supernet.depths=[1,3]"],
     "was made with --finetune-set []"),
])
def test_a_resume_with_other_settings_is_refused(tmp_path, capsys, plan, args, message):
    data, out = tmp_path / "x.npz", tmp_path / "out"
    data.write_bytes(b"")
    out.mkdir()
    (out / "plan.json").write_text(plan)
    assert ref.main(["--data", str(data), "--out", str(out), *args]) == 1
    assert message in capsys.readouterr().err


def test_each_transform_fine_tunes_with_its_experiment():
    from hydra import compose, initialize_config_dir

    from enas4d.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        grow = compose(config_name="train", overrides=[f"experiment={ref.experiment_of('grow')}"])
        split = compose(config_name="train", overrides=[f"experiment={ref.experiment_of('split')}"])
    assert list(grow.supernet.grow) == [0.4375, 0.25] and grow.supernet.freeze_static is True
    assert split.supernet.grow is None and split.supernet.name == grow.supernet.name == "from_static"
