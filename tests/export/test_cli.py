"""enas4d-export and enas4d-evaluate end to end on a tiny random-weight digits checkpoint, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from enas4d.checkpoint import load_supernet
from enas4d.export import exporter
from enas4d.export.cli import CONF_DIR, export
from enas4d.export.evaluate import evaluate
from enas4d.export.exporter import ExportError, is_export
from enas4d.checkpoint import build_datamodule
from enas4d.space import Subnet
from enas4d.nn.bn import BNEstimationSet

from .helpers import compose_cfg, quiet, simulate, split_thresholds, write_checkpoint, write_result

BN = ["bn.images=48", "bn.batch_size=24"]  # small BN estimation subset; the thresholds below use the same
REQUIRED = {"subnet", "thresholds", "resolution", "mean", "std", "class_names", "exit_macs", "checkpoint"}


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A checkpoint, a result.json for a 3-exit subnet whose thresholds split the validation set,
    the supernet's per-exit validation logits, and one export of it."""
    root = tmp_path_factory.mktemp("cli")
    ckpt = write_checkpoint(root / "tiny.ckpt")
    net, meta = load_supernet(ckpt)
    s0 = net.space.smallest()
    s = Subnet(28, s0.width, s0.kernel, s0.depth, s0.expand, (True, True, True))
    dm = build_datamodule(meta, {})
    BNEstimationSet(dm.bn_dataloader(num_images=48, batch_size=24)).reestimate(net, s)
    net.eval()
    x, y = (torch.cat(t) for t in zip(*dm.val_dataloader()))
    with torch.no_grad():
        outs = net(x)
    thr = split_thresholds(outs, "max_softmax")
    result = write_result(root / "result.json", ckpt, s, thr, val_accuracy=0.5)
    out = root / "export"
    meta_json = export(compose_cfg("export", f"result={result}", f"out={out}", *BN), quiet())
    return {"root": root, "ckpt": ckpt, "result": result, "out": out, "net": net, "subnet": s, "outs": outs,
            "y": y, "thr": thr, "meta": meta_json}


def test_export_folder_is_complete_and_consistent(exp):
    out, net, s = exp["out"], exp["net"], exp["subnet"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.ts", "onnx", "onnx_runner.py", "pt2",
                                                    "pt2_runner.py", "subnet.json"]
    meta = json.loads((out / "subnet.json").read_text())
    assert meta == json.loads(json.dumps(exp["meta"]))
    assert REQUIRED <= set(meta) and is_export(out)
    assert meta["subnet"] == s.to_dict() and meta["resolution"] == 28
    assert meta["exit_macs"] == net.macs(s) and meta["exit_stages"] == [0, 1, 2]
    assert meta["thresholds"] == pytest.approx(exp["thr"])
    ckpt_meta = torch.load(exp["ckpt"], weights_only=False)["enas4d"]["data"]
    assert meta["mean"] == ckpt_meta["mean"] and meta["std"] == ckpt_meta["std"]
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["checkpoint"] == str(exp["ckpt"].resolve())
    # torch.utils.flop_counter on each stage agrees with the analytic (cumulative) MACs.
    stage = meta["checks"]["flop_counter_stage_macs"]
    assert [sum(stage[:k + 1]) for k in range(3)] == meta["exit_macs"]
    # The model card's validation numbers are the supernet's early exit on the validation split.
    _, want_ex = simulate(exp["outs"], exp["thr"], "max_softmax")
    val = meta["validation"]
    assert val["exit_histogram"] == torch.bincount(want_ex, minlength=3).tolist()
    assert min(val["exit_histogram"]) > 0
    pred = torch.stack(exp["outs"])[want_ex, torch.arange(len(want_ex))].argmax(1)
    assert val["accuracy"] == pytest.approx(float((pred == exp["y"]).double().mean()))
    card = (out / "README.md").read_text()
    for e in range(3):
        assert f"| {e} | {e} |" in card and f"{100 * val['exit_rates'][e]:.1f}%" in card
    assert not [p for p in exp["root"].iterdir() if p.name.startswith(".export.")]  # no temp folders left


def test_exported_torchscript_matches_supernet(exp):
    meta = exp["meta"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the contract
        m = torch.jit.load(str(exp["out"] / "model.ts"))
    net, meta_ckpt = load_supernet(exp["ckpt"])
    dm = build_datamodule(meta_ckpt, {})
    x = torch.cat([xb for xb, _ in dm.val_dataloader()])
    x01 = x * torch.tensor(meta["std"]).view(1, -1, 1, 1) + torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    logits, ex = m(x01)
    want_logits, want_ex = simulate(exp["outs"], exp["thr"], "max_softmax")
    assert torch.equal(ex, want_ex)
    assert torch.allclose(logits, want_logits, atol=1e-4, rtol=0)


def test_bn_settings_default_to_the_searchs(exp, tmp_path):
    """Without bn.* overrides, export re-estimates BatchNorm as result.json's "bn" says, so it exports
    the network the search scored: the same exits as the explicit bn.images=48 export."""
    res = json.loads(exp["result"].read_text())
    result = write_result(tmp_path / "result.json", exp["ckpt"], exp["subnet"], res["thresholds"],
                          bn={"images": 48, "batch_size": 24})
    out = tmp_path / "export"
    meta = export(compose_cfg("export", f"result={result}", f"out={out}", "onnx=false", "pt2=false"), quiet())
    assert meta["validation"] == exp["meta"]["validation"]
    # The check can fail: other BN statistics give other exits/logits.
    other = export(compose_cfg("export", f"result={result}", f"out={tmp_path / 'other'}", "onnx=false", "pt2=false",
                               "bn.images=24", "bn.batch_size=8"), quiet())
    assert other["validation"] != exp["meta"]["validation"]


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_evaluate_reports_measured_numbers(exp, backend, tmp_path):
    out_json = tmp_path / "metrics.json"
    cfg = compose_cfg("evaluate", f"model={exp['out']}", f"backend={backend}", f"out={out_json}",
                      "batch_sizes=[1,8]", "timing_images=16", "repeats=1")
    m = evaluate(cfg, quiet())
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(m))
    val = exp["meta"]["validation"]
    assert m["accuracy"] == pytest.approx(val["accuracy"]) and m["exit_histogram"] == val["exit_histogram"]
    macs = exp["meta"]["exit_macs"]
    assert m["avg_macs"] == pytest.approx(sum(c * mc for c, mc in zip(m["exit_histogram"], macs)) / 40)
    for bs in ("1", "8"):
        t = m["throughput"][bs]
        assert t["early_exit_ips"] > 0 and t["last_exit_ips"] > 0
        assert t["ratio"] == pytest.approx(t["early_exit_ips"] / t["last_exit_ips"] / t["macs_reduction"])
        assert t["macs_reduction"] > 1.0  # some images left early


def test_evaluate_on_a_data_config(exp, tmp_path):
    cfg = compose_cfg("evaluate", f"model={exp['out']}", "data=digits", "data.image_size=8",
                      f"out={tmp_path / 'm.json'}",
                      "batch_sizes=[4]", "timing_images=8", "repeats=1")
    m = evaluate(cfg, quiet())
    assert m["data"]["num_images"] == 180 and sum(m["exit_histogram"]) == 180  # 10% of 1,797 digits


def test_evaluate_on_an_empty_split_is_one_clear_error(exp, tmp_path, monkeypatch):
    from enas4d.data.digits import DigitsDataModule
    monkeypatch.setattr(DigitsDataModule, "val_dataloader", lambda self: iter(()))
    cfg = compose_cfg("evaluate", f"model={exp['out']}", "data=digits", "data.image_size=8",
                      f"out={tmp_path / 'm.json'}", "batch_sizes=[4]", "timing_images=8", "repeats=1")
    with pytest.raises(ExportError, match="validation split is empty"):
        evaluate(cfg, quiet())
    assert not (tmp_path / "m.json").exists()


def test_overwrite_replaces_an_earlier_export_only_when_asked(exp, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(exp["out"], out)
    base = [f"result={exp['result']}", f"out={out}", *BN, "onnx=false", "pt2=false", "validate=false"]
    with pytest.raises(ExportError, match="earlier export; pass overwrite=true"):
        export(compose_cfg("export", *base), quiet())
    meta = export(compose_cfg("export", *base, "overwrite=true", "fold_bn=false"), quiet())
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.ts", "subnet.json"]
    assert meta["fold_bn"] is False and meta["validation"] is None and "onnx" not in meta["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy.")]


def test_failed_export_leaves_no_folder(exp, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(exporter, "export_onnx", boom)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="disk full"):
        export(compose_cfg("export", f"result={exp['result']}", f"out={out}", *BN, "validate=false"), quiet())
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused(exp, tmp_path):
    res = json.loads(exp["result"].read_text())

    def run(result: dict | None = None, *extra: str) -> None:
        path = tmp_path / "r.json"
        if result is not None:
            path.write_text(json.dumps(result))
        export(compose_cfg("export", f"result={path}", f"out={tmp_path / 'o'}", *BN, *extra), quiet())

    other = res | {"subnet": res["subnet"] | {"width": [[1, 2], [3, 4]]}}
    with pytest.raises(ExportError, match="does not belong to the search space"):
        run(other)
    with pytest.raises(ExportError, match="thresholds: expected 3 values"):
        run(res | {"thresholds": [0.5, 0.0]})
    with pytest.raises(ExportError, match="confidence 'top5'"):
        run(res | {"confidence": "top5"})
    with pytest.raises(ExportError, match="exit_stages"):
        run(res | {"exit_stages": [0, 2]})
    other_ckpt = write_checkpoint(tmp_path / "other.ckpt", seed=1)
    with pytest.raises(ExportError, match="was searched on"):
        run(res, f"ckpt={other_ckpt}")
    with pytest.raises(ExportError, match="no result file"):
        export(compose_cfg("export", f"result={tmp_path / 'missing.json'}", f"out={tmp_path / 'o'}"), quiet())
    assert not (tmp_path / "o").exists()
    # An existing folder that is not an export is never written into without overwrite=true.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not an enas4d export"):
        export(compose_cfg("export", f"result={exp['result']}", f"out={tmp_path / 'mine'}"), quiet())
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ExportError, match="is not an enas4d export"):  # the folder holding the inputs
        export(compose_cfg("export", f"result={exp['result']}", f"out={exp['root']}", "overwrite=true"), quiet())
    # An earlier export that holds an input is not replaced either.
    inside = tmp_path / "with_input"
    shutil.copytree(exp["out"], inside)
    shutil.copyfile(exp["result"], inside / "result.json")
    with pytest.raises(ExportError, match="refusing to replace"):
        export(compose_cfg("export", f"result={inside / 'result.json'}", f"out={inside}", "overwrite=true"), quiet())
    with pytest.raises(ExportError, match="not an enas4d export folder"):
        evaluate(compose_cfg("evaluate", f"model={tmp_path / 'mine'}"), quiet())


def test_command_line_exit_status_and_one_line_error(exp, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    cmd = [sys.executable, "-m", "enas4d.export.cli", f"result={exp['result']}", f"out={tmp_path / 'busy'}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(CONF_DIR).parent)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("enas4d-export: error: out:")


def _dead_pid() -> int:
    """The id of a process that has finished (what an interrupted export leaves in its folder names)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_checkpoint_with_other_content_at_the_searched_path_is_refused(exp, tmp_path):
    """result.json's checkpoint_sha256 ties its thresholds to the weights the search scored."""
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    shutil.copyfile(exp["ckpt"], ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    res = json.loads(exp["result"].read_text()) | {"checkpoint": str(ckpt.resolve()), "checkpoint_sha256": digest}
    result = tmp_path / "result.json"
    result.write_text(json.dumps(res))
    base = [f"result={result}", *BN, "onnx=false", "pt2=false", "validate=false"]
    meta = export(compose_cfg("export", *base, f"out={tmp_path / 'a'}"), quiet())
    assert meta["checkpoint_sha256"] == digest
    write_checkpoint(ckpt, seed=1)  # a longer training run wrote new weights to the same path
    with pytest.raises(ExportError, match=r"^ckpt: .* has other content .* than the checkpoint the search scored .*"
                                          r"run enas4d-search again on it, or pass allow_other_ckpt=true"):
        export(compose_cfg("export", *base, f"out={tmp_path / 'b'}"), quiet())
    assert not (tmp_path / "b").exists()
    meta = export(compose_cfg("export", *base, f"out={tmp_path / 'b'}", "allow_other_ckpt=true"), quiet())
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest() != digest
    result.write_text(json.dumps(res | {"checkpoint_sha256": "abc"}))
    with pytest.raises(ExportError, match=r"result: checkpoint_sha256='abc' in .* is not allowed; "
                                          r"allowed values: a sha256"):
        export(compose_cfg("export", *base, f"out={tmp_path / 'c'}"), quiet())


@pytest.mark.parametrize("bad", [-5, 7, float("nan"), "0.5", True])
def test_thresholds_outside_0_1_are_refused(exp, tmp_path, bad):
    res = json.loads(exp["result"].read_text())
    result = tmp_path / "r.json"
    result.write_text(json.dumps(res | {"thresholds": [0.5, bad, 0.0]}))
    with pytest.raises(ExportError, match=r"^thresholds\[1\]=.* is not allowed; allowed values: numbers in \[0, 1\]$"):
        export(compose_cfg("export", f"result={result}", f"out={tmp_path / 'o'}", *BN), quiet())
    assert not (tmp_path / "o").exists()


def test_thresholds_given_to_export_subnet_are_checked(exp, tmp_path):
    net, s = exp["net"], exp["subnet"]
    with pytest.raises(ExportError, match=r"thresholds\[0\]=7 is not allowed; allowed values: numbers in \[0, 1\]"):
        exporter.export_subnet(net, s, [7, 0.5, 0.0], tmp_path / "o", confidence="max_softmax",
                               data=exporter.DataInfo("digits", {}, [0.5] * 3, [0.2] * 3, [str(i) for i in range(10)]),
                               bn_batches=[], val_batches=None, check_images=torch.rand(2, 3, 8, 8),
                               checkpoint=str(exp["ckpt"]))
    assert exporter.check_thresholds([0, 1, 0.25]) == [0.0, 1.0, 0.25]


def test_overwrite_never_replaces_a_folder_that_is_not_an_export(exp, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cfg = compose_cfg("export", f"result={exp['result']}", f"out={mine}", *BN, "overwrite=true")
    with pytest.raises(ExportError, match=r"^out: .* exists and is not an enas4d export .*choose a new or empty "
                                          r"folder \(overwrite=true replaces only an earlier export\)$"):
        export(cfg, quiet())
    (mine / "subnet.json").write_text('{"format": "not-enas4d"}')  # a manifest of something else
    with pytest.raises(ExportError, match="is not an enas4d export"):
        export(cfg, quiet())
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "subnet.json"]
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (tmp_path / "empty").mkdir()
    exporter.check_out_dir((tmp_path / "empty").resolve(), overwrite=False)  # an empty folder is fine


def test_rerun_removes_stale_temporary_folders_of_its_target_only(exp, tmp_path):
    host, dead = exporter._host_tag(), _dead_pid()
    out = tmp_path / "export"
    stale = [f".export.tmp-{host}.{dead}.0123abcd", f".export.old-{host}.{dead}.4567cdef",
             ".export.tmp-k3j_9x0a"]  # the last: tempfile.mkdtemp's name, from an enas4d before this one
    kept = [f".export.tmp-{host}.{os.getpid()}.89abcdef",  # a running process (this one) may be exporting
            f".export.tmp-otherhost.{dead}.0123abcd",  # a process on another machine: cannot be asked
            ".export.tmp-notes", ".exports.tmp-k3j_9x0a", f".other.tmp-{host}.{dead}.0123abcd"]  # not ours
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.ts").write_text("half")
    export(compose_cfg("export", f"result={exp['result']}", f"out={out}", *BN, "onnx=false", "pt2=false",
                       "validate=false"), quiet())
    assert is_export(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", *kept])


def test_interrupted_replacement_puts_the_earlier_export_back(exp, tmp_path):
    """Killed between moving the earlier export aside and moving the new one in: the next run restores it."""
    host, dead = exporter._host_tag(), _dead_pid()
    old = tmp_path / f".export.old-{host}.{dead}.0123abcd"
    old.mkdir()
    shutil.copytree(exp["out"], old / "export")
    new = tmp_path / f".export.tmp-{host}.{dead}.4567cdef"  # the complete new export, never moved in
    shutil.copytree(exp["out"], new)
    out = tmp_path / "export"
    assert sorted(exporter.remove_stale_temps(out)) == sorted([old, new])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and is_export(out)
    with pytest.raises(ExportError, match="holds an earlier export"):
        export(compose_cfg("export", f"result={exp['result']}", f"out={out}", *BN), quiet())


def test_export_folder_gets_the_users_permissions(exp, tmp_path):
    """Not tempfile.mkdtemp's 0700: the folder and its files are created as mkdir and open would."""
    out = tmp_path / "export"
    before = os.umask(0o027)
    try:
        export(compose_cfg("export", f"result={exp['result']}", f"out={out}", *BN, "onnx=false", "pt2=false",
                           "validate=false"), quiet())
    finally:
        os.umask(before)
    assert out.stat().st_mode & 0o777 == 0o750
    for name in ("model.ts", "subnet.json", "README.md"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
