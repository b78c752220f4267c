"""Layering rules (issue 11): no module imports a command-line module; every app shares one config
folder and one way of ending on bad input."""

from __future__ import annotations

import ast
from pathlib import Path

import enas4d
from enas4d.utils.cli import CONF_DIR

PKG = Path(enas4d.__file__).resolve().parent
# Modules that are console-script entry points (they hold a @hydra.main).
CLI_MODULES = {"enas4d.train", "enas4d.search.cli", "enas4d.export.cli", "enas4d.export.evaluate", "enas4d.profile"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_cli_modules_are_the_hydra_apps():
    apps = {_module(p) for p in PKG.rglob("*.py") if "@hydra.main" in p.read_text()}
    assert apps == CLI_MODULES


def test_no_module_imports_a_command_line_module():
    offenders = {}
    for path in PKG.rglob("*.py"):
        bad = _imports(path) & (CLI_MODULES - {_module(path)})
        if bad:
            offenders[_module(path)] = sorted(bad)
    assert offenders == {}


def test_one_config_folder_and_one_exit_path():
    assert (CONF_DIR / "train.yaml").is_file()
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if path.name != "cli.py" or path.parent.name != "utils":
            assert 'parents[1] / "conf"' not in text and 'parents[2] / "conf"' not in text, path
            assert "sys.exit(1)" not in text and "sys.exit(2)" not in text, path


def test_search_and_export_do_not_import_lightning():
    import subprocess
    import sys

    code = ("import sys, enas4d.search.cli, enas4d.export.cli, enas4d.export.evaluate, enas4d.nn.bn; "
            "print('pytorch_lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# Lightning's loop and connector objects are internal (no stable API): read only the Trainer's public
# attributes and the hooks' arguments (issue 11).
LIGHTNING_INTERNALS = {"fit_loop", "validate_loop", "test_loop", "predict_loop", "epoch_loop", "batch_progress",
                       "epoch_progress", "val_loop", "automatic_optimization_loop", "_logger_connector",
                       "_checkpoint_connector", "_accelerator_connector", "_data_connector", "_results",
                       # LightningModule's private state (its public ``trainer`` raises when none is attached)
                       "_trainer", "_fabric", "_jit_is_scripting", "_current_fx_name", "_metric_attributes"}


def test_nothing_reads_lightnings_private_attributes():
    root = PKG.parent
    offenders = []
    for path in [*PKG.rglob("*.py"), *(root / "tools").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            private_of_trainer = node.attr.startswith("_") and not node.attr.startswith("__") and \
                owner.lstrip("_") == "trainer"
            if node.attr in LIGHTNING_INTERNALS or private_of_trainer:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
    assert offenders == []
