"""``torch.export`` of an :class:`~enas4d.export.early_exit.EarlyExitNet`: one program per stage.

The same split, names and manifest as the ONNX graphs (:mod:`enas4d.export.onnx_export`), as
``ExportedProgram`` files (``torch.export.save``) that ``pt2_runner.py`` (torch + numpy) runs with
the early-exit loop around them. The folder holds:

- ``preprocess.pt2``: ``x`` (N, C, H, W) in [0, 1] -> ``img`` (N, C, R, R) resized and normalised
  (always resized, as ``preprocess.onnx``: bilinear at scale 1 is an identity, and a shape test
  would fix H and W);
- ``stage_<k>.pt2``: inputs ``img`` and the taps ``tap_in_<i>`` of stage k - 1 that stage k
  reads; outputs (if stage k has an enabled exit) ``logits`` (N, classes) and ``confidence`` (N,),
  then the taps ``tap_out_<i>`` that stage k + 1 reads. Unlike the ONNX graphs (whose exporter drops
  unused inputs but keeps every tap output) only those taps are passed, so the runner compacts no
  tap that nobody reads, as ``model.ts`` does;
- ``manifest.json``: the ONNX manifest's keys, with ``torch_version`` instead of ``opset`` and the
  batch size from which ``model.ts`` runs channels-last (``channels_last_min_batch``).

Every batch dimension is dynamic (``torch.export.Dim``), as are H and W of ``preprocess``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from enas4d.export.early_exit import EarlyExitNet, Preprocess
from enas4d.export.onnx_export import MANIFEST, StageGraph, io_names, manifest_of

__all__ = ["MANIFEST", "ResizedPreprocess", "StageProgram", "export_pt2"]


class ResizedPreprocess(nn.Module):
    """:class:`Preprocess` that resizes every input, so that H and W stay dynamic in the program."""

    def __init__(self, pre: Preprocess):
        super().__init__()
        self.pre = pre

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, C, R, R) normalised."""
        r = self.pre.resolution
        return self.pre(F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False))


class StageProgram(StageGraph):
    """:class:`StageGraph` taking only the taps ``reads`` (positions) and returning only ``emits``.

    The taps stage k does not read are placeholders it never looks at.
    """

    def __init__(self, graph: StageGraph, num_prev: int, reads: Sequence[int], emits: Sequence[int]):
        super().__init__(graph.stage, graph.confidence, graph.emit_taps)
        self.num_prev, self.reads, self.emits = num_prev, list(reads), list(emits)

    def forward(self, img: Tensor, *used: Tensor) -> Tuple[Tensor, ...]:
        """img (N, C, R, R), the read taps (N, C_i, H_i, W_i) -> outputs named in the manifest."""
        prev: List[Tensor] = [img[:0]] * self.num_prev
        for pos, tap in zip(self.reads, used):
            prev[pos] = tap
        outs = super().forward(img, *prev)
        head = 2 if self.confidence is not None else 0  # logits, confidence
        return outs[:head] + tuple(outs[head + i] for i in self.emits)


def export_program(module: nn.Module, args: Tuple[Tensor, ...], path: Path, shapes: dict[str, Any]) -> None:
    """``torch.export`` ``module`` at ``args`` with the dynamic dimensions ``shapes`` (by argument name) to ``path``."""
    program = torch.export.export(module, args, dynamic_shapes=shapes)
    torch.export.save(program, os.fspath(path))


def _read_next(model: EarlyExitNet, k: int, num_taps: int) -> list[int]:
    """Positions of the ``num_taps`` taps of stage k that stage k + 1 reads (none after the last stage)."""
    return [i for i in range(num_taps) if model.tap_read[k][i]] if 0 <= k < len(model.stages) - 1 else []


@torch.no_grad()
def export_pt2(model: EarlyExitNet, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the stage programs and ``manifest.json`` of ``model`` into ``out_dir``; returns the manifest.

    Args:
        model: the early-exit model (eval mode).
        out_dir: an existing folder.
    """
    out = Path(out_dir)
    model = model.eval()
    batch = Dim("batch", min=1)  # one Dim for every input: a stage's inputs share the batch size
    side = model.resolution + 3  # any side: the program resizes anyway
    x = torch.rand(2, model.in_chans, side, side)
    export_program(ResizedPreprocess(model.preprocess), (x,), out / "preprocess.pt2",
                   {"x": {0: batch, 2: Dim("height", min=1), 3: Dim("width", min=1)}})
    img = model.preprocess(x)
    prev: list[Tensor] = []
    stages: list[dict[str, Any]] = []
    K = len(model.stages)
    for k, stage in enumerate(model.stages):
        e = model.exit_of_stage[k]
        _, taps = stage(img, prev)
        reads, emits = _read_next(model, k - 1, len(prev)), _read_next(model, k, len(taps))
        graph = StageGraph(stage, model.confidence if e >= 0 else None, k < K - 1)
        args = (img, *[prev[i] for i in reads])
        name = f"stage_{k}.pt2"
        shapes = {"img": {0: batch}, **({"used": ({0: batch},) * len(reads)} if reads else {})}
        export_program(StageProgram(graph, len(prev), reads, emits).eval(), args, out / name, shapes)
        inputs, outputs = io_names(e >= 0, reads, emits)
        stages.append({"file": name, "inputs": inputs, "outputs": outputs, "exit": e if e >= 0 else None})
        prev = taps
    manifest = {**manifest_of(model, "preprocess.pt2", stages), "torch_version": torch.__version__,
                "channels_last_min_batch": model.channels_last_min_batch}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
