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
