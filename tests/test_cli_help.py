"""Every console script answers --help with its own description and its options."""

import subprocess
import sys

import pytest

APPS = {"train": "enas4d.train", "search": "enas4d.search.cli", "export": "enas4d.export.cli",
        "evaluate": "enas4d.export.evaluate"}


@pytest.mark.parametrize("name", sorted(APPS))
def test_help_names_the_app_and_shows_its_options(name):
    proc = subprocess.run([sys.executable, "-m", APPS[name], "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"enas4d-{name}: ")
    assert "Examples:" in proc.stdout and "== Config ==" in proc.stdout
    assert f"task_name: {name}" in proc.stdout
