"""Run an exported enas4d early-exit model from its ``torch.export`` programs (torch + numpy; no enas4d).

This file is copied into every export folder as ``pt2_runner.py``, so it must keep importing
nothing but the standard library, numpy and torch. Usage::

    from pt2_runner import Pt2EarlyExit
    model = Pt2EarlyExit("path/to/export")              # reads pt2/manifest.json
    logits, exit_index = model(x)                       # x: float (N, 3, H, W) in [0, 1], numpy or torch
    logits, exit_index = model(x, thresholds=[0.9, 0.8, 0.0])   # replace the thresholds

or from the shell, on a ``.npy`` file of images: ``python pt2_runner.py EXPORT_DIR images.npy``
(prints the predicted class and exit of every image). Outputs are numpy arrays for a numpy input,
tensors for a tensor; torch's intra-op threads (``torch.set_num_threads``) apply.

It does what ``model.ts`` and ``onnx_runner.py`` do: preprocess all images, run stage 0 on all of
them and stage k only on those no earlier exit accepted (confidence >= threshold), feeding stage k
the features (taps) earlier stages computed for them, and scatter results back into input order.
As ``model.ts``, batches of at least ``channels_last_min_batch`` images run channels-last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

MANIFEST = os.path.join("pt2", "manifest.json")
RANGE_TOLERANCE = 1e-3  # slack of the [0, 1] input check (float rounding), as in model.ts
MANIFEST_KEYS = {"preprocess", "stages", "thresholds", "num_exits", "num_classes", "in_chans",
                 "channels_last_min_batch"}
Array = Union[np.ndarray, Tensor]


def _load(path: str) -> Callable[..., Any]:
    """The callable module of the ExportedProgram saved at ``path``; ValueError naming a damaged file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_dir: the program {path!r} is missing (incomplete export? export again)")
    try:
        return torch.export.load(path).module()
    except Exception as e:  # zipfile, pickle and torch errors of a damaged archive share no base class
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model_dir: the program {path!r} cannot be loaded (damaged or truncated? export "
                         f"again): {msg}") from e


def _read_manifest(model_dir: str) -> tuple[str, dict[str, Any]]:
    """(folder of the programs, its manifest) of an export folder or of its ``pt2`` folder."""
    pt2_dir = model_dir if os.path.isfile(os.path.join(model_dir, "manifest.json")) \
        else os.path.join(model_dir, "pt2")
    path = os.path.join(pt2_dir, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_dir: no pt2 manifest at {path!r} (is it an enas4d export folder "
                                "exported with pt2=true?)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"model_dir: the pt2 manifest {path!r} is not valid JSON (damaged? export again): "
                         f"{e}") from e
    missing = sorted(MANIFEST_KEYS - set(manifest)) if isinstance(manifest, dict) else ["(all)"]
    if missing:
        raise ValueError(f"model_dir: the pt2 manifest {path!r} lacks the keys {missing} (damaged? export again)")
    return pt2_dir, manifest


class Pt2EarlyExit:
    """Early-exit inference over the per-stage ``torch.export`` programs of an export folder.

    Args:
        model_dir: the export folder (holding ``pt2/manifest.json``) or the ``pt2`` folder itself.
        check_range: refuse input that is not finite and in [0, 1] (as model.ts does; one min/max pass).
    """

    def __init__(self, model_dir: str, check_range: bool = True):
        self.check_range = check_range
        pt2_dir, self.manifest = _read_manifest(os.fspath(model_dir))
        m = self.manifest
        self.in_chans, self.num_classes, self.num_exits = m["in_chans"], m["num_classes"], m["num_exits"]
        self.channels_last_min_batch = int(m["channels_last_min_batch"])
        # (E,) float64, compared with the float32 confidences as the search did; the last is ignored.
        self.thresholds = torch.tensor(m["thresholds"], dtype=torch.float64)
        self.preprocess = _load(os.path.join(pt2_dir, m["preprocess"]["file"]))
        self.stages = [_load(os.path.join(pt2_dir, s["file"])) for s in m["stages"]]

    def check_input(self, x: Array) -> Tensor:
        """Raise a clear ValueError unless x is a floating (N, C, H, W) array or tensor (with
        ``check_range``: of finite values in [0, 1]); returns it as a float32 tensor."""
        if isinstance(x, np.ndarray):
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"input: expected a floating-point array in [0, 1], got {x.dtype} "
                                 "(for uint8 images pass x.astype(np.float32) / 255)")
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"input: expected a (N, {self.in_chans}, H, W) float array in [0, 1], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"input: expected a floating-point tensor in [0, 1], got {x.dtype} "
                             "(for uint8 images pass x.float() / 255)")
        if self.check_range and x.numel():
            lo_t, hi_t = torch.aminmax(x)
            lo, hi = float(lo_t), float(hi_t)  # NaN fails both comparisons
            if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    hint = "it holds NaN or inf"
                elif hi > 1.0 and lo >= -RANGE_TOLERANCE and hi <= 255.0 + RANGE_TOLERANCE:
                    hint = "values up to 255: pass x / 255"
                elif lo < 0.0:
                    hint = "negative values: pass images in [0, 1], the model normalises them itself"
                else:
                    hint = "rescale it to [0, 1]"
                raise ValueError(f"input: expected finite pixel values in [0, 1], got values from {lo} to {hi} "
                                 f"({hint}; check_range=False turns this check off)")
        return x.float()

    def __call__(self, x: Array, thresholds: Optional[Sequence[float]] = None) -> tuple[Array, Array]:
        """(N, C, H, W) in [0, 1] -> logits (N, classes) float32 of the deciding exit, exit index (N,) int64."""
        as_numpy = isinstance(x, np.ndarray)
        thr = self.thresholds if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
        if thr.shape != (self.num_exits,):
            raise ValueError(f"thresholds: expected {self.num_exits} values (one per enabled exit), "
                             f"got shape {tuple(thr.shape)}")
        with torch.inference_mode():
            logits, exit_index = self._run(self.check_input(x), thr)
        return (logits.numpy(), exit_index.numpy()) if as_numpy else (logits, exit_index)

    def _run(self, x: Tensor, thr: Tensor) -> tuple[Tensor, Tensor]:
        """The early-exit loop over checked float32 images ``x`` (N, C, H, W) with thresholds ``thr`` (E,)."""
        n = x.shape[0]
        out = torch.zeros(n, self.num_classes)
        exit_index = torch.full((n,), -1, dtype=torch.int64)
        if n == 0:
            return out, exit_index
        img = self.preprocess(x)  # (n, C, R, R) of the undecided images
        if 0 < self.channels_last_min_batch <= n:
            img = img.contiguous(memory_format=torch.channels_last)
        idx = torch.arange(n)  # their input positions
        taps: dict[str, Tensor] = {}  # the last stage's tap outputs, by the next stage's input names
        for spec, stage in zip(self.manifest["stages"], self.stages):
            res = dict(zip(spec["outputs"], stage(img, *[taps[name] for name in spec["inputs"][1:]])))
            taps = {"tap_in_" + name[len("tap_out_"):]: t for name, t in res.items() if name.startswith("tap_out_")}
            e = spec["exit"]
            if e is None:
                continue
            if e == self.num_exits - 1:  # the last exit accepts everything
                out[idx] = res["logits"]
                exit_index[idx] = e
                break
            done = res["confidence"].double() >= thr[e]
            out[idx[done]] = res["logits"][done]
            exit_index[idx[done]] = e
            if bool(done.all()):
                break
            if bool(done.any()):  # compact: later stages see only the undecided images and their taps
                keep = ~done
                idx, img, taps = idx[keep], img[keep], {name: t[keep] for name, t in taps.items()}
        return out, exit_index


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the predicted class and exit of every image in a ``.npy`` file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="enas4d export folder")
    p.add_argument("images", help=".npy file of float (N, C, H, W) images in [0, 1]")
    args = p.parse_args(argv)
    try:
        model = Pt2EarlyExit(args.model_dir)
        logits, exit_index = model(np.load(args.images))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, (c, e) in enumerate(zip(logits.argmax(1), exit_index)):
        print(f"{i}\tclass={int(c)}\texit={int(e)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
