"""``device=``: one resolver (enas4d.utils.device) for every app that has the option (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import enas4d
from enas4d.utils.device import DEVICES, resolve_device


def test_values_and_the_default_error_type():
    assert DEVICES == "auto, cpu, cuda, cuda:N"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" Auto ") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"^device: 'gpu' not allowed; allowed values: auto, cpu, cuda, cuda:N$"):
        resolve_device("gpu")


def test_the_error_type_is_the_callers():
    class AppError(ValueError):
        pass

    with pytest.raises(AppError, match="device: 'meta' not allowed"):
        resolve_device("meta", AppError)


def test_search_and_evaluate_share_the_one_resolver():
    import enas4d.export.evaluate as evaluate
    import enas4d.search.setup as search

    assert search.resolve_device is resolve_device and evaluate.resolve_device is resolve_device
    pkg = Path(enas4d.__file__).resolve().parent
    defined = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                     for node in ast.walk(ast.parse(p.read_text()))
                     if isinstance(node, ast.FunctionDef) and node.name == "resolve_device")
    assert defined == ["utils/device.py"]
