"""ONNX export of an :class:`~enas4d.export.early_exit.EarlyExitNet`: one graph per stage.

The early-exit loop itself is data-dependent control flow, so it is not put into a graph; the
caller (``onnx_runner.py``, numpy + onnxruntime) runs it. The folder holds:

- ``preprocess.onnx``: ``x`` (N, C, H, W) in [0, 1] -> ``img`` (N, C, R, R) resized and normalised;
- ``stage_<k>.onnx`` for every stage k: inputs ``img`` and the taps ``tap_in_<i>`` stages < k
  produced; outputs (if stage k has an enabled exit) ``logits`` (N, classes) and ``confidence``
  (N,) float32 (the model's confidence measure), then (unless k is the last stage) the taps
  ``tap_out_<i>`` stage k + 1 reads;
- ``manifest.json``: file names, input/output names, exit index of each stage and the thresholds.

Every batch dimension is dynamic, so the runner can feed only the undecided images to stage k.
Exported with torch's TorchScript-based exporter (``dynamo=False``), which works offline.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, List, Tuple

import torch
from torch import Tensor, nn

from enas4d.export.early_exit import Confidence, EarlyExitNet, Preprocess
from enas4d.models.static import StaticStage

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class StageGraph(nn.Module):
    """Stage k with flat tensor inputs/outputs for ONNX: (img, *taps_in) -> ([logits, conf], *taps_out).

    ``confidence`` is None where stage k's exit is disabled (no logits, no confidence).
    """

    def __init__(self, stage: StaticStage, confidence: Confidence | None, emit_taps: bool):
        super().__init__()
        self.stage, self.confidence, self.emit_taps = stage, confidence, emit_taps

    def forward(self, img: Tensor, *prev: Tensor) -> Tuple[Tensor, ...]:
        """img (N, C, R, R), taps of stages < k (N, C_i, H_i, W_i) -> outputs named in the manifest."""
        logits, taps = self.stage(img, list(prev))  # every tap kept: each is a named graph output
        outs: List[Tensor] = []
        if self.confidence is not None:
            outs += [logits, self.confidence(logits)]  # (N, classes), (N,)
        if self.emit_taps:
            outs += taps
        return tuple(outs)


def export_graph(module: nn.Module, args: Tuple[Tensor, ...], path: Path, input_names: list[str],
            output_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    """One graph with the TorchScript-based exporter (no onnxscript or network needed)."""
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation; it is still the offline-safe path.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # Preprocess's size test
        torch.onnx.export(module, args, os.fspath(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)


@torch.no_grad()
def export_onnx(model: EarlyExitNet, out_dir: str | os.PathLike, opset: int = 17) -> dict[str, Any]:
    """Write the stage graphs and ``manifest.json`` of ``model`` into ``out_dir``; returns the manifest.

    Args:
        model: the early-exit model (eval mode).
        out_dir: an existing folder.
        opset: ONNX opset version.
    """
    out = Path(out_dir)
    model = model.eval()
    # Traced at another side than the resolution, so the graph keeps its Resize (an identity at
    # scale 1 with half-pixel centres) and accepts any H and W.
    side = model.resolution + 3
    x = torch.rand(2, model.in_chans, side, side)
    pre: Preprocess = model.preprocess
    batch = {0: "batch"}
    export_graph(pre, (x,), out / "preprocess.onnx", ["x"], ["img"],
            {"x": {0: "batch", 2: "height", 3: "width"}, "img": batch}, opset)
    img = pre(x)
    prev: list[Tensor] = []
    stages: list[dict[str, Any]] = []
    K = len(model.stages)
    for k, stage in enumerate(model.stages):
        e = model.exit_of_stage[k]
        last = k == K - 1
        graph = StageGraph(stage, model.confidence if e >= 0 else None, not last).eval()
        _, taps = stage(img, prev)
        inputs, outputs = io_names(e >= 0, range(len(prev)), range(len(taps)) if not last else [])
        name = f"stage_{k}.onnx"
        export_graph(graph, (img, *prev), out / name, inputs, outputs, {n: batch for n in inputs + outputs}, opset)
        stages.append({"file": name, "inputs": inputs, "outputs": outputs, "exit": e if e >= 0 else None})
        prev = taps
    manifest = {**manifest_of(model, "preprocess.onnx", stages), "opset": opset}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def io_names(has_exit: bool, taps_in: Iterable[int], taps_out: Iterable[int]) -> tuple[list[str], list[str]]:
    """A stage's input and output names: ``img`` and ``tap_in_<i>`` for the taps ``taps_in`` of the
    stage before; ``logits`` and ``confidence`` (with an exit), then ``tap_out_<i>`` for ``taps_out``."""
    inputs = ["img"] + [f"tap_in_{i}" for i in taps_in]
    outputs = (["logits", "confidence"] if has_exit else []) + [f"tap_out_{i}" for i in taps_out]
    return inputs, outputs


def manifest_of(model: EarlyExitNet, preprocess: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """``manifest.json``'s content common to the ONNX and torch.export folders (pt2_export.py)."""
    return {
        "format_version": MANIFEST_VERSION,
        "preprocess": {"file": preprocess, "input": "x", "output": "img"},
        "stages": stages,
        "thresholds": model.thresholds.tolist(),
        "confidence": model.confidence.measure,
        "num_exits": model.num_exits,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "resolution": model.resolution,
    }
