"""Per-stage torch.export programs + the torch runner reproduce the early-exit model (as test_onnx.py
for the ONNX graphs), really skip work, run without enas4d, and are written and checked by the export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import enas4d
from enas4d.export import pt2_runner
from enas4d.export.cli import export
from enas4d.export.early_exit import build_early_exit
from enas4d.export.evaluate import evaluate, load_model
from enas4d.export.exporter import ExportError
from enas4d.export.onnx_export import export_onnx
from enas4d.export.pt2_export import export_pt2
from enas4d.export.pt2_runner import Pt2EarlyExit
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.bn import reestimate_bn
from enas4d.space import Subnet
from enas4d.transform import from_static

from .helpers import (MEAN, STD, bn_reestimated, compose_cfg, normalise, quiet, simulate, split_thresholds,
                      write_checkpoint, write_result)

CASES = [  # (supernet, stages, seed, confidence measure, exits); "grow": stage 2 reads 1 of stage 1's taps
    ("resnet_cifar", 3, 10, "max_softmax", (True, True, True)),
    ("mbv3_cifar", 3, 11, "margin", (True, False, True)),
    ("grow", 3, 12, "entropy", (True, True, True)),
]


def grown(seed: int, exits: tuple[bool, ...]) -> tuple[MultiStageSupernet, Subnet]:
    """ResNet-20 grown into 3 stages (enas4d.transform.from_static), a random subnet, BN re-estimated."""
    torch.manual_seed(seed)
    net = from_static(enas4d.create_supernet("resnet20_static", num_classes=10, num_stages=1), 3, grow=(0.5, 0.25))
    s = net.space.sample(torch.Generator().manual_seed(seed))
    s = Subnet(s.resolution, s.width, s.kernel, s.depth, s.expand, exits)
    net.set_subnet(s)
    reestimate_bn(net, [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))])
    return net.eval(), s


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[3]}")
def exported(request, tmp_path_factory):
    """(export folder with pt2/ and onnx/, eager model, images, per-exit supernet logits, thresholds, measure)."""
    name, K, seed, measure, exits = request.param
    net, s = grown(seed, exits) if name == "grow" else bn_reestimated(name, K, seed, exits)
    x = torch.rand(40, 3, 36, 36, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = net(normalise(x))
    thr = split_thresholds(ref, measure)
    model = build_early_exit(net.extract(s), MEAN, STD, thr, 10, measure)
    assert name != "grow" or not all(model.tap_read[1])  # the case that passes fewer taps than ONNX
    out = tmp_path_factory.mktemp("pt2")
    (out / "pt2").mkdir()
    (out / "onnx").mkdir()
    manifest = export_pt2(model, out / "pt2")
    export_onnx(model, out / "onnx")  # the split to mirror
    shutil.copyfile(pt2_runner.__file__, out / "pt2_runner.py")
    assert manifest["thresholds"] == thr and manifest["confidence"] == measure
    return out, model, x, ref, thr, measure


def test_programs_mirror_the_onnx_split_with_dynamic_batch(exported):
    out, model, *_ = exported
    K = len(model.stages)
    files = sorted(p.name for p in (out / "pt2").iterdir())
    assert files == sorted(["manifest.json", "preprocess.pt2"] + [f"stage_{k}.pt2" for k in range(K)])
    pt2 = json.loads((out / "pt2" / "manifest.json").read_text())
    onnx = json.loads((out / "onnx" / "manifest.json").read_text())
    assert set(pt2) - set(onnx) == {"torch_version", "channels_last_min_batch"} and set(onnx) - set(pt2) == {"opset"}
    assert all(pt2[k] == onnx[k] for k in onnx if k not in ("opset", "preprocess", "stages"))
    assert [s["exit"] for s in pt2["stages"]] == [s["exit"] for s in onnx["stages"]]
    for k, (p, o) in enumerate(zip(pt2["stages"], onnx["stages"])):
        # The same names; only the taps stage k reads go in, only those stage k + 1 reads come out.
        read_in = [True] * (len(o["inputs"]) - 1) if k == 0 else model.tap_read[k - 1]
        assert p["inputs"] == [n for n, r in zip(o["inputs"], [True] + read_in) if r]
        head = [n for n in o["outputs"] if not n.startswith("tap_out_")]
        taps_out = [n for n in o["outputs"] if n.startswith("tap_out_")]
        assert p["outputs"] == head + [n for n, r in zip(taps_out, model.tap_read[k]) if r]
    for name in files:
        if name.endswith(".pt2"):
            program = torch.export.load(str(out / "pt2" / name))
            inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in
                      program.graph_signature.user_inputs]
            assert inputs and all(isinstance(n.meta["val"].shape[0], torch.SymInt) for n in inputs), name


def test_runner_reproduces_the_early_exit(exported):
    out, model, x, ref, thr, measure = exported
    runner = Pt2EarlyExit(str(out))
    logits, ex = runner(x.numpy())
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32 and ex.dtype == np.int64
    with torch.no_grad():
        want_logits, want_ex = model(x)
    assert len(np.unique(ex)) > 1  # the thresholds really split the batch
    np.testing.assert_array_equal(ex, want_ex.numpy())
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4, rtol=0)
    # ... which is the supernet's early exit.
    sim_logits, sim_ex = simulate(ref, thr, measure)
    np.testing.assert_array_equal(ex, sim_ex.numpy())
    np.testing.assert_allclose(logits, sim_logits.numpy(), atol=1e-4, rtol=0)
    t_logits, t_ex = runner(x)  # a tensor in, tensors out
    assert torch.equal(t_ex, want_ex) and torch.allclose(t_logits, want_logits, atol=1e-4, rtol=0)
    for i in (0, 5, 17):  # batch of one
        l1, e1 = runner(x[i:i + 1].numpy())
        assert e1[0] == want_ex[i] and np.allclose(l1[0], want_logits[i].numpy(), atol=1e-4)
    l0, e0 = runner(x[:0].numpy())
    assert l0.shape == (0, 10) and e0.shape == (0,)
    E = model.num_exits
    _, e_last = runner(x.numpy(), thresholds=[float("inf")] * E)
    assert (e_last == E - 1).all()


def test_later_stages_run_only_on_undecided_images(exported):
    out, model, x, ref, thr, measure = exported
    runner = Pt2EarlyExit(str(out))
    seen: list[tuple[int, int]] = []  # (stage, images it ran on)

    def counted(k, stage):
        def run(img, *taps):
            seen.append((k, img.shape[0]))
            return stage(img, *taps)
        return run

    runner.stages = [counted(k, stage) for k, stage in enumerate(runner.stages)]
    _, ex = runner(x)
    _, want_ex = simulate(ref, thr, measure)
    assert torch.equal(ex, want_ex)
    expected = []  # stage k sees the images no enabled exit before it accepted
    for k in range(len(model.stages)):
        earlier = [model.exit_of_stage[j] for j in range(k) if model.exit_of_stage[j] >= 0]
        expected.append((k, int((want_ex >= (max(earlier) + 1 if earlier else 0)).sum())))
    assert seen == [(k, n) for k, n in expected if n > 0]
    assert seen[0][1] == x.shape[0] and seen[-1][1] < x.shape[0]


def test_runner_refuses_bad_input(exported):
    runner = Pt2EarlyExit(str(exported[0]))
    for bad, msg in [(np.zeros((2, 1, 32, 32), np.float32), "input"), (np.zeros((2, 3, 32, 32), np.uint8), "floating"),
                     (np.zeros((3, 32, 32), np.float32), "input"), (torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                                                                    "floating"), ([[0.5]], "input")]:
        with pytest.raises(ValueError, match=msg):
            runner(bad)
    with pytest.raises(ValueError, match="thresholds"):
        runner(np.zeros((1, 3, 32, 32), np.float32), thresholds=[0.5])
    with pytest.raises(FileNotFoundError, match="manifest"):
        Pt2EarlyExit(str(exported[0] / "nothing"))


def test_runner_refuses_input_outside_0_1_unless_told(exported):
    out, _, x, *_ = exported
    runner = Pt2EarlyExit(str(out))
    for bad, hint in [(x.numpy() * 255, "values up to 255"), (x.numpy() - 0.5, "negative values"),
                      (np.where(x.numpy() > 0.5, np.nan, x.numpy()).astype(np.float32), "NaN or inf")]:
        with pytest.raises(ValueError, match=r"expected finite pixel values in \[0, 1\].*" + hint):
            runner(bad)
    Pt2EarlyExit(str(out), check_range=False)(x.numpy() * 255)  # runs when the check is off


def test_runner_script_needs_neither_enas4d_nor_onnxruntime(exported, tmp_path):
    out, model, x, *_ = exported
    np.save(tmp_path / "x.npy", x[:12].numpy())
    code = "\n".join([
        "import sys",
        "sys.modules['enas4d'] = None",
        "sys.modules['onnxruntime'] = None",
        f"sys.path.insert(0, {str(out)!r})",
        "import pt2_runner",
        f"sys.exit(pt2_runner.main([{str(out)!r}, 'x.npy']))",
    ])
    # -I: no PYTHONPATH, no user site, no cwd on the path; the venv's torch and numpy only.
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        logits, ex = model(x[:12])
    want = [f"{i}\tclass={int(c)}\texit={int(e)}" for i, (c, e) in enumerate(zip(logits.argmax(1), ex))]
    assert proc.stdout.splitlines() == want


@pytest.mark.parametrize("damage", ["truncated program", "missing program", "bad manifest", "manifest without keys"])
def test_runner_names_the_damaged_file(exported, tmp_path, damage):
    out = tmp_path / "export"
    shutil.copytree(exported[0], out)
    program, manifest = out / "pt2" / "stage_1.pt2", out / "pt2" / "manifest.json"
    if damage == "truncated program":
        program.write_bytes(program.read_bytes()[:200])
        error, match = ValueError, "stage_1.pt2' cannot be loaded"
    elif damage == "missing program":
        program.unlink()
        error, match = FileNotFoundError, "stage_1.pt2' is missing"
    elif damage == "bad manifest":
        manifest.write_text(manifest.read_text()[:50])
        error, match = ValueError, "manifest.json' is not valid JSON"
    else:
        manifest.write_text("{}")
        error, match = ValueError, "lacks the keys"
    with pytest.raises(error, match=match):
        Pt2EarlyExit(str(out))


# ------------------------------------------------------------------ enas4d-export / enas4d-evaluate
@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """One enas4d-export (pt2, no ONNX) of a random-weight digits checkpoint with a 3-exit subnet."""
    root = tmp_path_factory.mktemp("pt2_cli")
    ckpt = write_checkpoint(root / "tiny.ckpt")
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=3)
    s0 = net.space.smallest()
    s = Subnet(28, s0.width, s0.kernel, s0.depth, s0.expand, (True, True, True))
    result = write_result(root / "result.json", ckpt, s, [0.3, 0.3, 0.0])
    out = root / "export"
    meta = export(compose_cfg("export", f"result={result}", f"out={out}", "bn.images=24", "bn.batch_size=24",
                              "onnx=false", "validate=false"), quiet())
    return out, meta


def test_export_writes_and_checks_the_programs(cli_export):
    out, meta = cli_export
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.ts", "pt2", "pt2_runner.py", "subnet.json"]
    assert meta["files"] == {"torchscript": "model.ts", "pt2": "pt2/manifest.json", "pt2_runner": "pt2_runner.py"}
    check = meta["checks"]["pt2"]  # eager against the saved programs, as for ONNX
    assert check["max_abs_diff"] <= 1e-4 and check["decisions_flipped_at_threshold"] == 0
    assert (out / "pt2_runner.py").read_bytes() == open(pt2_runner.__file__, "rb").read()


def test_export_without_pt2(cli_export, tmp_path):
    out, _ = cli_export
    result = out.parent / "result.json"
    meta = export(compose_cfg("export", f"result={result}", f"out={tmp_path / 'e'}", "bn.images=24",
                              "bn.batch_size=24", "onnx=false", "pt2=false", "validate=false"), quiet())
    assert meta["files"] == {"torchscript": "model.ts"} and "pt2" not in meta["checks"]
    assert not (tmp_path / "e" / "pt2").exists()
    with pytest.raises(ExportError, match=r"exported without torch.export programs \(pt2=false\)"):
        load_model(tmp_path / "e", "pt2")


def test_evaluate_times_the_pt2_backend(cli_export, tmp_path):
    out, _ = cli_export
    fast = ["batch_sizes=[1,4]", "timing_images=8", "repeats=1", "threads=1"]
    pt2 = evaluate(compose_cfg("evaluate", f"model={out}", "backend=pt2", f"out={tmp_path / 'p.json'}", *fast),
                   quiet())
    ts = evaluate(compose_cfg("evaluate", f"model={out}", f"out={tmp_path / 't.json'}", "reference=false", *fast),
                  quiet())
    assert pt2["backend"] == "pt2" and pt2["threads"] == 1
    assert pt2["accuracy"] == ts["accuracy"] and pt2["exit_histogram"] == ts["exit_histogram"]
    assert pt2["reference"]["macs"] > 0 and pt2["throughput"]["4"]["reference_ips"] > 0
    with pytest.raises(ExportError, match="device: 'cuda' not allowed with backend=pt2"):
        load_model(out, "pt2", device="cuda")
