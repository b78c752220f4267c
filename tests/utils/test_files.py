"""Atomic writes keep the old file whole when writing fails, and leave no temporary file behind."""

import json
import os

import pytest

from enas4d.utils.files import atomic_target, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "result.json"
    write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json(path, {"a": float("nan")})  # not standard JSON: refused before anything is replaced
    with pytest.raises(RuntimeError), atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["result.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
