"""result.json records the content hash of the checkpoint the search scored (export checks it)."""

import hashlib
import io
import json

from rich.console import Console

from enas4d.search.cli import search


def test_result_records_the_checkpoints_sha256(tiny_ckpt, make_cfg, tmp_path):
    res = search(make_cfg(f"ckpt={tiny_ckpt}", "budget=0.5x", "evaluations=1", "static_evaluations=1"),
                 tmp_path / "out", Console(file=io.StringIO()))
    digest = hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert res["checkpoint_sha256"] == digest
    assert json.loads((tmp_path / "out" / "result.json").read_text())["checkpoint_sha256"] == digest
