"""Run an exported enas4d early-exit model with onnxruntime (numpy only; no torch, no enas4d).

This file is copied into every export folder as ``onnx_runner.py``, so it must keep importing
nothing but the standard library, numpy and onnxruntime. Usage::

    from onnx_runner import OnnxEarlyExit
    model = OnnxEarlyExit("path/to/export")            # reads onnx/manifest.json
    logits, exit_index = model(x)                       # x: float32 (N, 3, H, W) in [0, 1]
    logits, exit_index = model(x, thresholds=[0.9, 0.8, 0.0])   # replace the thresholds

or from the shell, on a ``.npy`` file of images: ``python onnx_runner.py EXPORT_DIR images.npy``
(prints the predicted class and exit of every image).

It does what the TorchScript model does: preprocess all images, run stage 0 on all of them and
stage k only on those no earlier exit accepted (confidence >= threshold), feeding stage k the
features (taps) earlier stages computed for them, and scatter results back into input order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

MANIFEST = os.path.join("onnx", "manifest.json")
RANGE_TOLERANCE = 1e-3  # slack of the [0, 1] input check (float rounding), as in model.ts
MANIFEST_KEYS = {"preprocess", "stages", "thresholds", "num_exits", "num_classes", "in_chans"}


class OnnxEarlyExit:
    """Early-exit inference over the per-stage ONNX graphs of an export folder.

    Args:
        model_dir: the export folder (holding ``onnx/manifest.json``) or the ``onnx`` folder itself.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads per session (None: onnxruntime's default).
        check_range: refuse input that is not finite and in [0, 1] (as model.ts does; one min/max pass).
    """

    def __init__(self, model_dir: str, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                 check_range: bool = True):
        self.check_range = check_range
        onnx_dir = model_dir if os.path.isfile(os.path.join(model_dir, "manifest.json")) \
            else os.path.join(model_dir, "onnx")
        path = os.path.join(onnx_dir, "manifest.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_dir: no ONNX manifest at {path!r} (is it an enas4d export folder?)")
        try:
            with open(path) as f:
                self.manifest = json.load(f)
        except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"model_dir: the ONNX manifest {path!r} is not valid JSON (damaged? export again): "
                             f"{e}") from e
        missing = sorted(MANIFEST_KEYS - set(self.manifest)) if isinstance(self.manifest, dict) else ["(all)"]
        if missing:
            raise ValueError(f"model_dir: the ONNX manifest {path!r} lacks the keys {missing} (damaged? export again)")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])

        def session(name: str) -> ort.InferenceSession:
            graph = os.path.join(onnx_dir, name)
            if not os.path.isfile(graph):
                raise FileNotFoundError(f"model_dir: the ONNX graph {graph!r} is missing (incomplete export? "
                                        "export again)")
            try:
                return ort.InferenceSession(graph, opts, providers=providers)
            except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"model_dir: the ONNX graph {graph!r} cannot be loaded (damaged or truncated? "
                                 f"export again): {msg}") from e

        m = self.manifest
        self.in_chans, self.num_classes, self.num_exits = m["in_chans"], m["num_classes"], m["num_exits"]
        # (E,) float64, compared with the float32 confidences as the search did; the last is ignored.
        self.thresholds = np.asarray(m["thresholds"], dtype=np.float64)
        self.preprocess = session(m["preprocess"]["file"])
        self.stages = [session(s["file"]) for s in m["stages"]]
        # Graph inputs a stage really uses (an exporter may drop unused tap inputs).
        self._feeds = [{i.name for i in sess.get_inputs()} for sess in self.stages]

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Raise a clear ValueError unless x is a floating (N, C, H, W) array (with ``check_range``: of
        finite values in [0, 1]); returns it as float32."""
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != self.in_chans:
            shape = list(x.shape) if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"input: expected a (N, {self.in_chans}, H, W) float array in [0, 1], got {shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"input: expected a floating-point array in [0, 1], got {x.dtype} "
                             "(for uint8 images pass x.astype(np.float32) / 255)")
        if self.check_range and x.size:
            lo, hi = float(x.min()), float(x.max())  # NaN propagates and fails both comparisons
            if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    hint = "it holds NaN or inf"
                elif hi > 1.0 and lo >= -RANGE_TOLERANCE and hi <= 255.0 + RANGE_TOLERANCE:
                    hint = "values up to 255: pass x / 255"
                elif lo < 0.0:
                    hint = "negative values: pass images in [0, 1], the model normalises them itself"
                else:
                    hint = "rescale it to [0, 1]"
                raise ValueError(f"input: expected finite pixel values in [0, 1], got values from {lo} to {hi} "
                                 f"({hint}; check_range=False turns this check off)")
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, x: np.ndarray, thresholds: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) in [0, 1] -> logits (N, classes) float32 of the deciding exit, exit index (N,) int64."""
        x = self.check_input(x)
        thr = self.thresholds if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        if thr.shape != (self.num_exits,):
            raise ValueError(f"thresholds: expected {self.num_exits} values (one per enabled exit), got {thr.shape}")
        n = x.shape[0]
        out = np.zeros((n, self.num_classes), dtype=np.float32)
        exit_index = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return out, exit_index
        img = self.preprocess.run(None, {"x": x})[0]
        idx = np.arange(n)  # input positions of the undecided images
        taps: list[np.ndarray] = []
        for spec, sess, feeds in zip(self.manifest["stages"], self.stages, self._feeds):
            feed = {name: arr for name, arr in zip(spec["inputs"], [img, *taps]) if name in feeds}
            res = dict(zip(spec["outputs"], sess.run(spec["outputs"], feed)))
            taps = [res[name] for name in spec["outputs"] if name.startswith("tap_out_")]
            e = spec["exit"]
            if e is None:
                continue
            if e == self.num_exits - 1:
                done = np.ones(len(idx), dtype=bool)  # the last exit accepts everything
            else:
                done = res["confidence"].astype(np.float64) >= thr[e]
            out[idx[done]] = res["logits"][done]
            exit_index[idx[done]] = e
            if done.all():
                break
            if done.any():  # compact: later stages see only the undecided images and their taps
                keep = ~done
                idx, img, taps = idx[keep], img[keep], [t[keep] for t in taps]
        return out, exit_index


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the predicted class and exit of every image in a ``.npy`` file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="enas4d export folder")
    p.add_argument("images", help=".npy file of float (N, C, H, W) images in [0, 1]")
    args = p.parse_args(argv)
    try:
        model = OnnxEarlyExit(args.model_dir)
        logits, exit_index = model(np.load(args.images))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, (c, e) in enumerate(zip(logits.argmax(1), exit_index)):
        print(f"{i}\tclass={int(c)}\texit={int(e)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
