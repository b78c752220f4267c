"""enas4d-evaluate: a damaged export folder is a one-line error, and the speed-up is also measured
against the plain static network of the family."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import enas4d
from enas4d.export.baseline import count_macs, family_spec, plain_for, plain_network
from enas4d.export.cli import export
from enas4d.export.evaluate import evaluate
from enas4d.export.exporter import ExportError
from enas4d.space import Subnet
from enas4d.utils.cli import CONF_DIR

from .helpers import compose_cfg, quiet, write_checkpoint, write_result

FAST = ["batch_sizes=[1,4]", "timing_images=8", "repeats=1", "threads=1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One small export (resnet_cifar, 3 exits, TorchScript and ONNX) of a random-weight digits checkpoint."""
    root = tmp_path_factory.mktemp("evaluate")
    ckpt = write_checkpoint(root / "tiny.ckpt")
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=3)
    s0 = net.space.smallest()
    s = Subnet(28, s0.width, s0.kernel, s0.depth, s0.expand, (True, True, True))
    result = write_result(root / "result.json", ckpt, s, [0.3, 0.3, 0.0])
    out = root / "export"
    export(compose_cfg("export", f"result={result}", f"out={out}", "bn.images=24", "bn.batch_size=24",
                       "validate=false"), quiet())
    return out


def damaged_copy(src: Path, dst: Path, damage: str) -> Path:
    """A copy of the export folder ``src`` with one part damaged."""
    shutil.copytree(src, dst)
    if damage == "truncated model.ts":
        ts = dst / "model.ts"
        ts.write_bytes(ts.read_bytes()[: ts.stat().st_size // 3])
    elif damage == "missing model.ts":
        (dst / "model.ts").unlink()
    elif damage == "truncated ONNX graph":
        g = dst / "onnx" / "stage_0.onnx"
        g.write_bytes(g.read_bytes()[:100])
    elif damage == "missing ONNX graph":
        (dst / "onnx" / "stage_2.onnx").unlink()
    elif damage == "missing ONNX manifest":
        (dst / "onnx" / "manifest.json").unlink()
    elif damage == "missing subnet.json":
        (dst / "subnet.json").unlink()
    elif damage == "subnet.json without files":
        meta = json.loads((dst / "subnet.json").read_text())
        del meta["files"]
        (dst / "subnet.json").write_text(json.dumps(meta))
    else:
        raise ValueError(damage)
    return dst


DAMAGES = [  # (damage, backend, words the one-line error must hold)
    ("truncated model.ts", "torchscript", "model.ts' cannot be loaded"),
    ("missing model.ts", "torchscript", "model.ts' is missing"),
    ("truncated ONNX graph", "onnx", "stage_0.onnx' cannot be loaded"),
    ("missing ONNX graph", "onnx", "stage_2.onnx' is missing"),
    ("missing ONNX manifest", "onnx", "no ONNX manifest"),
    ("missing subnet.json", "torchscript", "not an enas4d export folder"),
    ("subnet.json without files", "onnx", "subnet.json is damaged"),
]


@pytest.mark.parametrize("damage,backend,words", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_export_is_a_clear_error(exported, tmp_path, damage, backend, words):
    folder = damaged_copy(exported, tmp_path / "export", damage)
    cfg = compose_cfg("evaluate", f"model={folder}", f"backend={backend}", f"out={tmp_path / 'm.json'}", *FAST)
    with pytest.raises(ExportError, match=words):
        evaluate(cfg, quiet())
    assert not (tmp_path / "m.json").exists()


def test_damaged_export_on_the_command_line_is_one_line_and_exit_2(exported, tmp_path):
    folder = damaged_copy(exported, tmp_path / "export", "truncated model.ts")
    cmd = [sys.executable, "-m", "enas4d.export.evaluate", f"model={folder}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONF_DIR.parent)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("enas4d-evaluate: error: model:") and "model.ts' cannot be loaded" in last


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_evaluate_compares_with_the_plain_network(exported, tmp_path, backend):
    cfg = compose_cfg("evaluate", f"model={exported}", f"backend={backend}", f"out={tmp_path / 'm.json'}", *FAST)
    m = evaluate(cfg, quiet())
    spec = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=1).spec
    plain_macs = count_macs(plain_network(spec, 10), 3, 32)
    assert 40.5e6 < plain_macs < 41e6  # ResNet-20 with its two 1x1 projections
    assert m["reference"]["macs"] == plain_macs and "resnet_cifar" in m["reference"]["name"]
    for bs in ("1", "4"):
        row = m["throughput"][bs]
        assert row["reference_ips"] > 0
        assert row["speedup_vs_reference"] == pytest.approx(row["early_exit_ips"] / row["reference_ips"])
        assert row["macs_reduction_vs_reference"] == pytest.approx(plain_macs / row["avg_macs"])
        ratio = row["speedup_vs_reference"] / row["macs_reduction_vs_reference"]
        assert row["ratio_vs_reference"] == pytest.approx(ratio)
    off = evaluate(compose_cfg("evaluate", f"model={exported}", f"backend={backend}", f"out={tmp_path / 'n.json'}",
                               "reference=false", *FAST), quiet())
    assert off["reference"] is None and "reference_ips" not in off["throughput"]["1"]


def test_plain_network_matches_the_family_and_its_stored_spec():
    net = enas4d.create_supernet("mbv3_cifar", num_classes=10, num_stages=1)
    s = net.space.largest()
    s = Subnet(s.resolution, s.width, tuple(tuple(3 for _ in row) for row in s.kernel), s.depth, s.expand, s.exits)
    plain = plain_for(net.spec, 10)
    assert count_macs(plain, 3, 32) == net.macs(s)[-1]  # the K = 1 largest subnet at 3x3, as plain modules
    assert family_spec({"name": "mbv3_cifar", "in_chans": 3}) == net.spec
    assert family_spec({"name": "custom-s2dnas", "spec": net.spec.to_dict()}) == net.spec
    assert family_spec({"name": "torchvision:resnet18-s2dnas", "spec": {"kind": "graph"}}) is None
    with pytest.raises(ValueError, match="kernel: 4 not allowed"):
        plain_network(net.spec, 10, kernel=4)


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_data_outside_0_1_is_a_clear_error(exported, tmp_path, monkeypatch, backend):
    """Images that are not in [0, 1] once the data's normalisation is undone (e.g. another mean/std
    than the model's) are refused by the model's input check: one clear line, not a traceback."""
    import enas4d.export.evaluate as ev

    to_unit = ev.to_unit
    monkeypatch.setattr(ev, "to_unit", lambda x, mean, std: to_unit(x, mean, std) * 255)  # 0..255 pixels
    cfg = compose_cfg("evaluate", f"model={exported}", f"backend={backend}", f"out={tmp_path / 'm.json'}", *FAST)
    with pytest.raises(ExportError, match=r"data: 'digits' does not give images in \[0, 1\].*pass x / 255"):
        evaluate(cfg, quiet())


def test_latency_times_the_model_alone_pass_by_pass():
    import itertools

    import torch

    from enas4d.export.metrics import latency

    calls = []

    def predict(x, thr):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], 10), torch.arange(x.shape[0]) % 2  # exits 0, 1, 0, 1, ...

    ticks = itertools.count()
    got = latency(predict, torch.rand(10, 3, 4, 4), 4, 2, repeats=3, warmup=2, clock=lambda: float(next(ticks)))
    assert calls == [4, 4] * 5  # the partial batch dropped; 2 warm-up passes, 3 timed, nothing else
    assert got["images"] == 8 and got["per_pass"] == [2 / 8] * 3 and got["seconds"] == 2 / 8  # 1 tick per batch
    assert got["exit_rates"] == [0.5, 0.5] and got["batch_size"] == 4 and got["repeats"] == 3


# ----------------------------------------------------------------------------- device= (issue 11)
DEVICE_ERRORS = [  # (device=, words of the one-line ExportError): enas4d-search's values and messages
    ("tpu", r"device: 'tpu' not allowed; allowed values: auto, cpu, cuda, cuda:N"),
    ("3", r"device: 3 not allowed; allowed values: auto, cpu, cuda, cuda:N"),
    ("cuda:x", r"device: 'cuda:x' not allowed"),
]


@pytest.mark.parametrize("device,words", DEVICE_ERRORS, ids=[d[0] for d in DEVICE_ERRORS])
def test_bad_device_is_a_clear_error_before_anything_runs(exported, tmp_path, device, words):
    cfg = compose_cfg("evaluate", f"model={exported}", f"device={device}", f"out={tmp_path / 'm.json'}", *FAST)
    with pytest.raises(ExportError, match=words):
        evaluate(cfg, quiet())
    assert not (tmp_path / "m.json").exists()


def test_cuda_without_cuda_is_a_clear_error(exported, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = compose_cfg("evaluate", f"model={exported}", "device=cuda", f"out={tmp_path / 'm.json'}", *FAST)
    with pytest.raises(ExportError, match="device: 'cuda' needs CUDA, which torch cannot use here"):
        evaluate(cfg, quiet())


def test_bad_device_on_the_command_line_is_one_line_and_exit_2(exported, tmp_path):
    cmd = [sys.executable, "-m", "enas4d.export.evaluate", f"model={exported}", "device=gpu",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONF_DIR.parent)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("enas4d-evaluate: error: device: 'gpu' not allowed; "
                                                    "allowed values: auto, cpu, cuda, cuda:N")


def test_evaluate_runs_on_the_device_it_is_given(exported, tmp_path):
    """device=auto is CUDA where torch has it (the model.ts and the plain reference run there, the
    results come back to the CPU), else the CPU; the metrics say which, and agree with device=cpu."""
    import torch

    cpu = evaluate(compose_cfg("evaluate", f"model={exported}", "device=cpu", f"out={tmp_path / 'c.json'}",
                               *FAST), quiet())
    auto = evaluate(compose_cfg("evaluate", f"model={exported}", "device=auto", f"out={tmp_path / 'a.json'}",
                                *FAST), quiet())
    assert cpu["device"] == "cpu"
    assert auto["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert json.loads((tmp_path / "a.json").read_text())["device"] == auto["device"]
    n = cpu["data"]["num_images"]
    assert auto["data"]["num_images"] == n
    # Other kernels may round a confidence on a threshold the other way: at most an image or two.
    assert abs(auto["accuracy"] - cpu["accuracy"]) <= 2 / n
    assert sum(abs(a - c) for a, c in zip(auto["exit_histogram"], cpu["exit_histogram"])) <= 4
    assert auto["throughput"]["4"]["reference_ips"] > 0


def test_onnx_runs_on_cuda_only_with_onnxruntimes_cuda_provider(monkeypatch):
    """The onnxruntime runner stays on the CPU unless onnxruntime has its CUDA provider: device=cuda
    without it is a clear error, device=auto falls back to the CPU (and says so)."""
    import io

    import onnxruntime as ort
    import torch
    from omegaconf import OmegaConf
    from rich.console import Console

    import enas4d.export.evaluate as ev

    assert ev.onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ExportError, match=r"device: 'cuda:1' with backend=onnx needs onnxruntime's "
                                          r"CUDAExecutionProvider \(the onnxruntime-gpu package\)"):
        ev.onnx_providers(torch.device("cuda", 1))
    # Pretend torch has two GPUs, so that the resolver accepts cuda and auto picks it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    out = io.StringIO()
    console = Console(file=out, width=200)
    auto = OmegaConf.create({"device": "auto", "backend": "onnx"})
    assert ev._device(auto, console) == torch.device("cpu")
    assert "onnxruntime has no CUDA provider here; the onnx backend runs on the CPU" in out.getvalue()
    with pytest.raises(ExportError, match="device: 'cuda' with backend=onnx needs"):
        ev._device(OmegaConf.create({"device": "cuda", "backend": "onnx"}), console)
    assert ev._device(OmegaConf.create({"device": "cuda", "backend": "torchscript"}), console) == torch.device("cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ev.onnx_providers(torch.device("cuda", 1)) == [("CUDAExecutionProvider", {"device_id": 1}),
                                                          "CPUExecutionProvider"]
    assert ev._device(auto, console) == torch.device("cuda")
