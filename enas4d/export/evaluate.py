"""``enas4d-evaluate``: what an exported early-exit model does on a dataset, and how fast.

    enas4d-evaluate model=outputs/demo/export               # the training run's validation split
    enas4d-evaluate model=outputs/demo/export data=digits   # or any conf/data/*.yaml dataset

Reports accuracy, the *measured* average MACs (the cumulative MACs of the exit each image really
took), the exit histogram, and throughput in images per second at each batch size next to the
same exported model forced through its last exit (every threshold at +inf), with the ratio of the
wall-clock speed-up to the MACs reduction; and (``reference=true``) next to the plain static
network of the family (for ``resnet_cifar``: ResNet-20; random weights, same backend and memory
layout rule), the network a user would deploy instead: the real speed-up, not only the
self-relative one. A damaged export folder is a one-line error. Writes ``metrics.json``. :func:`evaluate` is the
importable function; :func:`main` the thin Hydra entry point. Settings: conf/evaluate.yaml.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.errors import InstantiationException
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor

from enas4d.checkpoint import CheckpointMeta
from enas4d.export import jit
from enas4d.export.baseline import Reference, family_spec, plain_reference
from enas4d.utils.cli import CONF_DIR, one_line_errors, positive_int
from enas4d.export.exporter import ExportError, read_export
from enas4d.export.metrics import EmptyDatasetError, Predict, exit_report, throughput, to_unit
from enas4d.export.report import exit_table, throughput_table
from enas4d.search.budget import format_macs
from enas4d.utils.files import write_json
from enas4d.utils import rebatch

__all__ = ["CONF_DIR", "BACKENDS", "load_model", "evaluate", "main"]

BACKENDS = ("torchscript", "onnx")


def load_model(model_dir: str | os.PathLike, backend: str,
               threads: int | None = None) -> tuple[dict[str, Any], Predict]:
    """``subnet.json``'s content and a ``predict(x, thresholds) -> (logits, exit_index)`` for a backend."""
    model_dir = os.fspath(model_dir)
    if backend not in BACKENDS:
        raise ExportError(f"backend: {backend!r} not allowed; allowed values: {list(BACKENDS)}")
    meta = read_export(model_dir)
    if meta is None:
        raise ExportError(f"model: {model_dir!r} is not an enas4d export folder (no valid subnet.json)")
    files = meta.get("files")
    missing = sorted({"files", "exit_macs", "exit_stages", "thresholds", "num_classes"} - set(meta))
    if missing or not isinstance(files, dict) or not isinstance(files.get("torchscript"), str):
        raise ExportError(f"model: {model_dir!r}/subnet.json is damaged (missing or bad keys: "
                          f"{missing or ['files']}); export again")
    if backend == "torchscript":
        path = os.path.join(model_dir, files["torchscript"])
        if not os.path.isfile(path):
            raise ExportError(f"model: {path!r} is missing (incomplete export? export again)")
        try:
            module = jit.load(path)
        except (RuntimeError, OSError, ValueError) as e:  # torch.jit's errors on a damaged archive
            raise ExportError(f"model: {path!r} cannot be loaded (damaged or truncated? export again): "
                              f"{_first_line(e)}") from e

        def predict(x: Tensor, thr: Optional[Tensor]) -> tuple[Tensor, Tensor]:
            return module(x) if thr is None else module(x, thr)

        return meta, predict
    if "onnx" not in files:
        raise ExportError(f"backend: {model_dir!r} was exported without ONNX graphs (onnx=false)")
    from enas4d.export.onnx_runner import OnnxEarlyExit

    try:
        runner = OnnxEarlyExit(model_dir, threads=threads)
    except (OSError, ValueError, KeyError, TypeError) as e:  # the runner names the damaged file
        raise ExportError(f"model: {_first_line(e)}") from e

    def predict_onnx(x: Tensor, thr: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        logits, ex = runner(x.numpy(), None if thr is None else thr.numpy())
        return torch.from_numpy(logits), torch.from_numpy(ex)

    return meta, predict_onnx


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def reference_for(meta: dict[str, Any], backend: str, threads: int | None) -> Reference | None:
    """The plain static network of the export's family on ``backend``; None when there is none to
    build (a network transformed from a torchvision/timm graph)."""
    supernet = meta.get("supernet") if isinstance(meta.get("supernet"), dict) else {}
    spec = family_spec(supernet)
    if spec is None:
        return None
    return plain_reference(spec, str(supernet.get("name")), int(meta["num_classes"]), int(meta.get("in_chans", 3)),
                           backend, threads)


def reference_table(rows: list[dict[str, Any]], ref: Reference) -> Table:
    """One row per batch size: early exit against the plain static network a user would deploy instead."""
    t = Table(title=f"against the {ref.name}, {format_macs(ref.macs)} MACs (random weights: speed only)")
    for col in ("batch", "early exit", "plain", "speed-up", "MACs reduction", "ratio"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["batch_size"]), f"{r['early_exit_ips']:.1f}", f"{r['reference_ips']:.1f}",
                  f"{r['speedup_vs_reference']:.2f}x", f"{r['macs_reduction_vs_reference']:.2f}x",
                  f"{r['ratio_vs_reference']:.2f}")
    return t


def _datamodule(cfg: DictConfig, meta: dict[str, Any]) -> Any:
    """The datamodule of ``cfg.data``, or (null) the one the export recorded, set up."""
    if cfg.data is None:
        from enas4d.checkpoint import CheckpointError, build_datamodule

        ckpt_meta = CheckpointMeta(meta["supernet"], meta["space"], meta["data"])
        try:
            return build_datamodule(ckpt_meta, dict(OmegaConf.to_container(cfg.data_overrides, resolve=True) or {}))
        except CheckpointError as e:
            raise ExportError(str(e)) from e
    if cfg.data_overrides:
        raise ExportError("data_overrides: only with data=null; override data.* keys directly instead")
    try:
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("validate")
    except (ValueError, TypeError, OSError, KeyError, InstantiationException) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"data: cannot build the dataset: {msg}") from e
    if dm.num_classes != meta["num_classes"]:
        raise ExportError(f"data: {dm.name!r} has {dm.num_classes} classes, the model {meta['num_classes']}")
    return dm


def _timing_images(batches: list[Tensor], count: int) -> Tensor:
    """``count`` images: the given ones in order, repeated as often as needed."""
    pool = torch.cat(batches)
    reps = -(-count // pool.shape[0])
    return pool.repeat(reps, 1, 1, 1)[:count]


def evaluate(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """Evaluate the export folder ``cfg.model``; returns (and writes to ``cfg.out``) the metrics."""
    console = console or Console()
    for key in ("eval_batch_size", "timing_images", "timing_max_batches", "repeats"):
        positive_int(cfg, key, ExportError)
    sizes = list(cfg.batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ExportError(f"batch_sizes: expected a non-empty list of integers >= 1, got {sizes}")
    threads = None if cfg.threads is None else positive_int(cfg, "threads", ExportError)
    if threads is not None:
        torch.set_num_threads(threads)
    meta, predict = load_model(str(cfg.model), str(cfg.backend), threads)
    dm = _datamodule(cfg, meta)
    exit_macs = meta["exit_macs"]

    # Accuracy pass (streamed), keeping the first images for the timing set.
    need = min(int(cfg.timing_images), int(cfg.timing_max_batches) * max(sizes))
    kept: list[Tensor] = []
    n_kept = 0

    def batches():
        nonlocal n_kept
        for x, y in rebatch(dm.val_dataloader(), int(cfg.eval_batch_size)):
            x = to_unit(x, dm.mean, dm.std)
            if n_kept < need:
                kept.append(x[:need - n_kept])
                n_kept += kept[-1].shape[0]
            yield x, y

    try:
        report = exit_report(predict, batches(), exit_macs)
    except EmptyDatasetError as e:  # an empty split: a one-line error, not a traceback
        raise ExportError(f"data: the validation split is empty; enas4d-evaluate needs images ({e})") from e
    except (ValueError, torch.jit.Error) as e:  # the model's input check (ONNX runner; TorchScript)
        lines = [ln.strip() for ln in str(e).splitlines() if "expected finite pixel values" in ln]
        if not lines:
            raise
        raise ExportError(f"data: {dm.name!r} does not give images in [0, 1] once its normalisation is undone "
                          f"(other mean/std than the model's?): {lines[-1]}") from e
    ref = reference_for(meta, str(cfg.backend), threads) if cfg.reference else None
    rows = []
    for bs in sizes:
        count = max(bs, min(int(cfg.timing_images), int(cfg.timing_max_batches) * bs))
        images = _timing_images(kept, count)
        rows.append(throughput(predict, images, bs, len(exit_macs), exit_macs, repeats=int(cfg.repeats),
                               reference=None if ref is None else ref.run,
                               reference_macs=None if ref is None else ref.macs))
    target = float(cfg.target_ratio)
    metrics = {
        "model": os.path.abspath(str(cfg.model)),
        "backend": str(cfg.backend),
        "data": {"name": dm.name, "split": "validation", "num_images": report["num_images"]},
        "accuracy": report["accuracy"],
        "avg_macs": report["avg_macs"],
        "last_exit_macs": exit_macs[-1],
        "macs_reduction": exit_macs[-1] / report["avg_macs"],
        "exit_histogram": report["exit_histogram"],
        "exit_rates": report["exit_rates"],
        "exit_accuracy": report["exit_accuracy"],
        "exit_macs": exit_macs,
        "exit_stages": meta["exit_stages"],
        "thresholds": meta["thresholds"],
        "confidence": meta["confidence"],
        "throughput": {str(r["batch_size"]): r for r in rows},
        "reference": None if ref is None else {"name": ref.name, "macs": ref.macs},
        "target_ratio": target,
        "meets_target": all(r["ratio"] >= target for r in rows),
        "threads": torch.get_num_threads() if cfg.backend == "torchscript" else threads,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
    }
    console.print(exit_table(meta, report, title=f"{meta['supernet']['name']} early exit on {dm.name} "
                                                  f"validation ({report['num_images']} images, {cfg.backend})"))
    console.print(throughput_table(rows, target))
    ratios = ", ".join(f"batch {r['batch_size']}: {r['ratio']:.2f}" for r in rows)
    console.print(f"evaluate: wall-clock speed-up / MACs reduction = {ratios} (target >= {target})")
    if ref is not None:
        console.print(reference_table(rows, ref))
        real = ", ".join(f"batch {r['batch_size']}: {r['speedup_vs_reference']:.2f}x" for r in rows)
        console.print(f"evaluate: speed-up against the plain network = {real} (below 1: slower than it)")
    elif cfg.reference:
        console.print(f"evaluate: no plain reference network for {meta.get('supernet', {}).get('name')!r} "
                      "(transformed from a graph)")
    out = Path(str(cfg.out))
    write_json(out, metrics)  # atomic: never a half-written metrics.json
    console.print(f"evaluate: wrote {out}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the accuracy (for sweepers). Bad input: one line, exit 2."""
    with one_line_errors("enas4d-evaluate", ExportError):
        metrics = evaluate(cfg)
    return float(metrics["accuracy"])


if __name__ == "__main__":
    main()
