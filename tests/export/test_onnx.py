"""Per-stage ONNX graphs + the numpy/onnxruntime runner reproduce the early-exit model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from enas4d.export import onnx_runner
from enas4d.export.early_exit import build_early_exit
from enas4d.export.onnx_export import export_onnx
from enas4d.export.onnx_runner import OnnxEarlyExit

from .helpers import MEAN, STD, bn_reestimated, normalise, simulate, split_thresholds

CASES = [  # (supernet, stages, seed, confidence measure, exits)
    ("resnet_cifar", 3, 10, "max_softmax", (True, True, True)),
    ("mbv3_cifar", 3, 11, "margin", (True, False, True)),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[3]}")
def exported(request, tmp_path_factory):
    """(export folder, eager model, images, per-exit supernet logits, thresholds, measure)."""
    name, K, seed, measure, exits = request.param
    net, s = bn_reestimated(name, K, seed, exits)
    x = torch.rand(40, 3, 36, 36, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = net(normalise(x))
    thr = split_thresholds(ref, measure)
    model = build_early_exit(net.extract(s), MEAN, STD, thr, 10, measure)
    out = tmp_path_factory.mktemp("onnx")
    (out / "onnx").mkdir()
    manifest = export_onnx(model, out / "onnx")
    shutil.copyfile(onnx_runner.__file__, out / "onnx_runner.py")
    assert manifest["thresholds"] == thr and manifest["confidence"] == measure
    return out, model, x, ref, thr, measure


def test_graphs_are_valid_with_dynamic_batch(exported):
    out, model, *_ = exported
    files = sorted(p.name for p in (out / "onnx").iterdir())
    assert files == sorted(["manifest.json", "preprocess.onnx"] + [f"stage_{k}.onnx" for k in range(len(model.stages))])
    for name in files:
        if name.endswith(".onnx"):
            g = onnx.load(str(out / "onnx" / name))
            onnx.checker.check_model(g)
            for v in list(g.graph.input) + list(g.graph.output):
                assert v.type.tensor_type.shape.dim[0].dim_param, f"{name}:{v.name} has a fixed batch size"


def test_runner_reproduces_the_early_exit(exported):
    out, model, x, ref, thr, measure = exported
    runner = OnnxEarlyExit(str(out))
    logits, ex = runner(x.numpy())
    want_logits, want_ex = model(x)
    assert len(np.unique(ex)) > 1  # the thresholds really split the batch
    np.testing.assert_array_equal(ex, want_ex.numpy())
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4, rtol=0)
    # ... which is the supernet's early exit.
    sim_logits, sim_ex = simulate(ref, thr, measure)
    np.testing.assert_array_equal(ex, sim_ex.numpy())
    np.testing.assert_allclose(logits, sim_logits.numpy(), atol=1e-4, rtol=0)
    for i in (0, 5, 17):  # batch of one
        l1, e1 = runner(x[i:i + 1].numpy())
        assert e1[0] == want_ex[i] and np.allclose(l1[0], want_logits[i].numpy(), atol=1e-4)
    l0, e0 = runner(x[:0].numpy())
    assert l0.shape == (0, 10) and e0.shape == (0,)
    E = model.num_exits
    _, e_last = runner(x.numpy(), thresholds=[float("inf")] * E)
    assert (e_last == E - 1).all()


def test_runner_refuses_bad_input(exported):
    runner = OnnxEarlyExit(str(exported[0]))
    for bad, msg in [(np.zeros((2, 1, 32, 32), np.float32), "input"), (np.zeros((2, 3, 32, 32), np.uint8), "floating"),
                     (np.zeros((3, 32, 32), np.float32), "input")]:
        with pytest.raises(ValueError, match=msg):
            runner(bad)
    with pytest.raises(ValueError, match="thresholds"):
        runner(np.zeros((1, 3, 32, 32), np.float32), thresholds=[0.5])
    with pytest.raises(FileNotFoundError, match="manifest"):
        OnnxEarlyExit(str(exported[0] / "nothing"))


def test_runner_script_needs_neither_torch_nor_enas4d(exported, tmp_path):
    out, model, x, *_ = exported
    np.save(tmp_path / "x.npy", x[:12].numpy())
    code = "\n".join([
        "import sys",
        "sys.modules['torch'] = None",
        "sys.modules['enas4d'] = None",
        f"sys.path.insert(0, {str(out)!r})",
        "import onnx_runner",
        f"sys.exit(onnx_runner.main([{str(out)!r}, 'x.npy']))",
    ])
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    logits, ex = model(x[:12])
    want = [f"{i}\tclass={int(c)}\texit={int(e)}" for i, (c, e) in enumerate(zip(logits.argmax(1), ex))]
    assert proc.stdout.splitlines() == want


def test_runner_refuses_input_outside_0_1_unless_told(exported):
    out, _, x, *_ = exported
    runner = OnnxEarlyExit(str(out))
    for bad, hint in [(x.numpy() * 255, "values up to 255"), (x.numpy() - 0.5, "negative values"),
                      (np.where(x.numpy() > 0.5, np.nan, x.numpy()).astype(np.float32), "NaN or inf")]:
        with pytest.raises(ValueError, match=r"expected finite pixel values in \[0, 1\].*" + hint):
            runner(bad)
    OnnxEarlyExit(str(out), check_range=False)(x.numpy() * 255)  # runs when the check is off


@pytest.mark.parametrize("damage", ["truncated graph", "missing graph", "bad manifest", "manifest without keys"])
def test_runner_names_the_damaged_file(exported, tmp_path, damage):
    out = tmp_path / "export"
    shutil.copytree(exported[0], out)
    graph, manifest = out / "onnx" / "stage_1.onnx", out / "onnx" / "manifest.json"
    if damage == "truncated graph":
        graph.write_bytes(graph.read_bytes()[:200])
        error, match = ValueError, "stage_1.onnx' cannot be loaded"
    elif damage == "missing graph":
        graph.unlink()
        error, match = FileNotFoundError, "stage_1.onnx' is missing"
    elif damage == "bad manifest":
        manifest.write_text(manifest.read_text()[:50])
        error, match = ValueError, "manifest.json' is not valid JSON"
    else:
        manifest.write_text("{}")
        error, match = ValueError, "lacks the keys"
    with pytest.raises(error, match=match):
        OnnxEarlyExit(str(out))
