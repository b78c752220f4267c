"""tools/bench_export.py: the slice layouts it builds and one tiny timing pass (the benchmark itself is a script)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "bench_export.py"
spec = importlib.util.spec_from_file_location("bench_export", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_layouts_have_the_stated_slices():
    narrow = bench.supernet_of("resnet_cifar", 3, "narrow-first")
    # largest subnet's width[k][g]: channels slice k adds in group g
    assert narrow.space.largest().width == ((4, 8, 16), (4, 8, 16), (8, 16, 32)) and narrow.spec.reads_from is None
    grow = bench.supernet_of("resnet_cifar", 3, "grow")
    assert grow.space.largest().width == ((8, 16, 32), (4, 8, 16), (16, 32, 64)) and grow.spec.reads_from == (0, 0, 2)
    # resnet20_static is the K = 1 export's architecture; mbv3_static (5x5) is not the 3x3 one
    assert not bench.needs_static_ref("resnet_cifar", "min") and bench.needs_static_ref("mbv3_cifar", "min")


def test_one_tiny_pass_gives_a_tax_per_layout():
    layouts = ("narrow-first", "grow")
    models = bench.family_models("resnet_cifar", "min", layouts)
    assert list(models["models"]) == ["K=1", "K=3 narrow", "K=3 grow", "plain"]
    assert models["models"]["K=3 grow"][1] == 3  # three exits, forced through the last
    res = bench.bench_family(models, 2, reps=1, inner=1, clock=bench.time.perf_counter)
    taxes = bench.taxes_of(res, layouts)
    assert set(taxes) == set(layouts) and all(t > 0 for t in taxes.values())


def test_unknown_layout_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_export.py", "--layout", "wide-first"])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == 2 and "invalid choice: 'wide-first'" in capsys.readouterr().err
