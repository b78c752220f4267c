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

Latency: when the export carries the latency prediction of a search with a device profile
(``subnet.json``'s ``latency``), or ``device_profile=PATH`` is given, the average latency per
image of the model alone is also measured at the prediction's (else the profile's) batch size
(:func:`~enas4d.export.metrics.latency`) and set against the profile's prediction for the exit
rates of the images timed (:func:`~enas4d.search.latency.predicted_vs_measured`: each stage a
per-call part shared by the images of a batch reaching it plus a per-image part, by the rule of
:func:`~enas4d.search.calibrate.expected_cost`), and against the search's prediction and budget:
``metrics.json``'s ``latency``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
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
from enas4d.utils.device import resolve_device
from enas4d.export.exporter import ExportError, read_export
from enas4d.export.metrics import EmptyDatasetError, Predict, exit_report, throughput, to_unit
from enas4d.export.metrics import latency as measure_latency
from enas4d.export.report import exit_table, throughput_table
from enas4d.search.budget import format_macs, format_seconds
from enas4d.search.calibrate import expected_cost
from enas4d.search.latency import CLOCKS, DeviceProfile, LatencyError, predicted_vs_measured, timer
from enas4d.utils.files import write_json
from enas4d.utils import rebatch

__all__ = ["CONF_DIR", "BACKENDS", "load_model", "onnx_providers", "evaluate", "main"]

BACKENDS = ("torchscript", "onnx", "pt2")
TORCH_BACKENDS = ("torchscript", "pt2")  # those torch's intra-op threads (torch.set_num_threads) apply to


def onnx_providers(device: torch.device) -> list[Any]:
    """The onnxruntime execution providers that run the ONNX backend on ``device``: the CPU one, or
    for a CUDA device onnxruntime's CUDA provider (the onnxruntime-gpu package; ExportError where
    this onnxruntime has none)."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ExportError(f"device: {str(device)!r} with backend=onnx needs onnxruntime's CUDAExecutionProvider "
                          f"(the onnxruntime-gpu package), which this onnxruntime lacks (it has {available}); "
                          "allowed values here: device=cpu, or backend=torchscript")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def load_model(model_dir: str | os.PathLike, backend: str, threads: int | None = None,
               device: torch.device | str = "cpu") -> tuple[dict[str, Any], Predict]:
    """``subnet.json``'s content and a ``predict(x, thresholds) -> (logits, exit_index)`` for a backend.

    The model runs on ``device`` (TorchScript: loaded there; ONNX: see :func:`onnx_providers`; pt2:
    the CPU only); ``predict`` takes and returns CPU tensors, so on CUDA its time includes the copies.
    """
    model_dir = os.fspath(model_dir)
    device = torch.device(device)
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
            module = jit.load(path, map_location=device)
        except (RuntimeError, OSError, ValueError) as e:  # torch.jit's errors on a damaged archive
            raise ExportError(f"model: {path!r} cannot be loaded (damaged or truncated? export again): "
                              f"{_first_line(e)}") from e

        def predict(x: Tensor, thr: Optional[Tensor]) -> tuple[Tensor, Tensor]:
            x = x.to(device)  # no-ops on the CPU
            logits, ex = module(x) if thr is None else module(x, thr)
            return logits.cpu(), ex.cpu()

        return meta, predict
    if backend == "pt2":
        return meta, _pt2_predict(model_dir, files, device)
    if "onnx" not in files:
        raise ExportError(f"backend: {model_dir!r} was exported without ONNX graphs (onnx=false)")
    from enas4d.export.onnx_runner import OnnxEarlyExit

    providers = onnx_providers(device)
    try:
        runner = OnnxEarlyExit(model_dir, providers=providers, threads=threads)
    except (OSError, ValueError, KeyError, TypeError) as e:  # the runner names the damaged file
        raise ExportError(f"model: {_first_line(e)}") from e
    if device.type == "cuda" and "CUDAExecutionProvider" not in runner.preprocess.get_providers():
        raise ExportError(f"device: {str(device)!r}: onnxruntime could not start its CUDA provider (it fell back "
                          f"to {runner.preprocess.get_providers()}); use device=cpu")

    def predict_onnx(x: Tensor, thr: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        logits, ex = runner(x.numpy(), None if thr is None else thr.numpy())
        return torch.from_numpy(logits), torch.from_numpy(ex)

    return meta, predict_onnx


def _pt2_predict(model_dir: str, files: dict[str, Any], device: torch.device) -> Predict:
    """``predict`` of the export's torch.export programs (``pt2_runner.py``), on the CPU."""
    if device.type != "cpu":
        raise ExportError(f"device: {str(device)!r} not allowed with backend=pt2 (its programs were exported "
                          "for the CPU); allowed values: device=cpu, or backend=torchscript")
    if "pt2" not in files:
        raise ExportError(f"backend: {model_dir!r} was exported without torch.export programs (pt2=false)")
    from enas4d.export.pt2_runner import Pt2EarlyExit

    try:
        runner = Pt2EarlyExit(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:  # the runner names the damaged file
        raise ExportError(f"model: {_first_line(e)}") from e

    def predict_pt2(x: Tensor, thr: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return runner(x, thr)

    return predict_pt2


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def reference_for(meta: dict[str, Any], backend: str, threads: int | None,
                  device: torch.device | str = "cpu") -> Reference | None:
    """The plain static network of the export's family on ``backend`` and ``device`` (as the export
    runs there); None when there is none to build (a network transformed from a torchvision/timm graph)."""
    supernet = meta.get("supernet") if isinstance(meta.get("supernet"), dict) else {}
    spec = family_spec(supernet)
    if spec is None:
        return None
    device = torch.device(device)
    return plain_reference(spec, str(supernet.get("name")), int(meta["num_classes"]), int(meta.get("in_chans", 3)),
                           backend, threads, device=device,
                           providers=onnx_providers(device) if backend == "onnx" else None)


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


@dataclass
class _Latency:
    """What the latency comparison needs, settled before anything is timed."""

    batch_size: int  # of the prediction, and of the measurement compared with it
    batch_from: str  # where that batch size comes from (for the output)
    profile: DeviceProfile | None  # None: the export's recorded per-exit predictions (its profile is missing)
    recorded: dict[str, Any] | None  # subnet.json's latency (the search's prediction), if any


def _latency_setup(cfg: DictConfig, meta: dict[str, Any], console: Console) -> _Latency | None:
    """The device profile and batch size to compare latency at; None when there is nothing to predict with.

    ``device_profile=PATH`` must be a profile of the export's supernet (LatencyError naming the
    field otherwise); without it the export's recorded profile is used, and if that file is gone,
    the per-exit latencies the export recorded from it. ``latency_batch_size`` (null: the batch size
    of the export's prediction, else the profile's) must have been profiled.
    """
    recorded = meta.get("latency") if isinstance(meta.get("latency"), dict) else None
    path = cfg.device_profile
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise LatencyError(f"device_profile: {path!r} not allowed; allowed values: the path of an enas4d-profile "
                           "profile.json, or null (the export's own)")
    b = cfg.latency_batch_size
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
        raise LatencyError(f"latency_batch_size: {b!r} not allowed; allowed values: integers >= 1, or null")
    if path is None and recorded is None:
        return None
    profile = None
    if path is not None:
        profile = DeviceProfile.load(path, field="device_profile")
    elif recorded.get("device_profile") and os.path.isfile(recorded["device_profile"]):
        profile = DeviceProfile.load(recorded["device_profile"], field="device_profile")
        if recorded.get("device_profile_sha256") not in (None, profile.sha256):
            console.print(f"evaluate: warning: the device profile {profile.path} changed since the search (other "
                          "sha256); predicting with it as it is now")
    else:
        console.print(f"evaluate: warning: the export's device profile {recorded.get('device_profile')!r} is "
                      "missing; predicting with the per-exit latencies the export recorded from it")
    if profile is not None:
        profile.check_supernet(meta["supernet"], meta["space"], field="device_profile")
    if b is not None:
        batch, source = int(b), "latency_batch_size"
    elif recorded is not None and (profile is None or recorded["batch_size"] in profile.batch_sizes):
        batch, source = int(recorded["batch_size"]), "the batch size of the export's prediction"
    else:
        batch, source = profile.batch_size, "the device profile's batch size"
    if profile is not None:
        profile.model(batch, field="latency_batch_size")
    elif batch != recorded["batch_size"]:
        raise LatencyError(f"latency_batch_size: {batch} is not the batch size of the export's prediction "
                           f"({recorded['batch_size']}) and its device profile is missing; pass device_profile=PATH")
    return _Latency(batch, source, profile, recorded)


def _latency_report(lat: _Latency, meta: dict[str, Any], timed: dict[str, Any], clock: str, backend: str,
                    threads: int | None) -> dict[str, Any]:
    """Predicted against measured average latency per image at ``lat.batch_size`` (``timed``: the
    :func:`~enas4d.export.metrics.latency` measurement)."""
    measured = timed["seconds"]
    rates = timed["exit_rates"]  # of the images timed
    if lat.profile is not None:
        out = predicted_vs_measured(lat.profile, meta, rates, measured, lat.batch_size)
        out["predicted_by"] = "device_profile"
    else:
        assert lat.recorded is not None
        forced = list(lat.recorded["exit_latency"])
        calls = lat.recorded.get("exit_call_latency")  # None: exported before the per-call model
        per_image = forced if calls is None else [t - c for t, c in zip(forced, calls)]
        predicted = expected_cost(rates, per_image, calls)
        note = None if calls is not None else ("the export records no per-call latencies (exported before the "
                                               "per-call model): predicted per image, as if every stage ran on "
                                               "the whole batch")
        out = {"batch_size": lat.batch_size, "predicted": predicted, "measured": measured,
               "ratio": measured / predicted, "exit_latency": forced,
               "exit_call_latency": None if calls is None else list(calls),
               "call_fit": (lat.recorded.get("call_fit") or {"batch_sizes": None, "note": None}) if note is None
               else {"batch_sizes": None, "note": note},
               "device_profile": lat.recorded.get("device_profile"),
               "device_profile_sha256": lat.recorded.get("device_profile_sha256"), "same_machine": None,
               "predicted_by": "export"}
    rec = lat.recorded or {}
    budget = rec.get("budget")
    out.update({
        "exit_rates": list(rates),
        "batch_from": lat.batch_from,
        "images": timed["images"],
        "repeats": timed["repeats"],
        "per_pass": timed["per_pass"],  # seconds per image of each timed pass; measured is their median
        "clock": clock,
        "profile_clock": lat.profile.data["clock"] if lat.profile is not None else rec.get("clock"),
        "backend": backend,
        "profile_runtime": lat.profile.data["runtime"] if lat.profile is not None else rec.get("runtime"),
        "threads": threads,
        "profile_threads": lat.profile.data["threads"] if lat.profile is not None else rec.get("threads"),
        "search_predicted": rec.get("expected"),  # the search's prediction, at its validation exit rates
        "budget_unit": rec.get("budget_unit"),
        "budget": budget,  # seconds per image, for a latency budget
        "measured_vs_budget": None if budget is None else measured / budget,
    })
    return out


def _print_latency(out: dict[str, Any], console: Console) -> None:
    """The latency comparison, in a few lines."""
    console.print(f"evaluate: latency at batch {out['batch_size']} ({out['batch_from']}; the model alone, median of "
                  f"{out['repeats']} passes over {out['images']} images, {out['clock']} clock): measured "
                  f"{format_seconds(out['measured'])}/image, predicted "
                  f"{format_seconds(out['predicted'])}/image by {out['device_profile']} for the exit rates measured "
                  f"({' '.join(f'{r:.2f}' for r in out['exit_rates'])}): measured / predicted = {out['ratio']:.2f}")
    if (out.get("call_fit") or {}).get("note"):
        console.print(f"evaluate: note: {out['call_fit']['note']}")
    if out["search_predicted"] is not None:
        budget = "" if out["budget"] is None else (f", budget {format_seconds(out['budget'])}: measured / budget = "
                                                   f"{out['measured_vs_budget']:.2f}")
        console.print(f"evaluate: the search predicted {format_seconds(out['search_predicted'])}/image (its "
                      f"validation exit rates){budget}")
    if out["same_machine"] is False:
        console.print("evaluate: warning: the device profile was measured on another machine or torch version")
    if out["profile_runtime"] not in (None, out["backend"]):
        console.print(f"evaluate: warning: the device profile timed the {out['profile_runtime']} runtime, this run "
                      f"the {out['backend']} backend")
    if out["profile_threads"] not in (None, out["threads"]):
        console.print(f"evaluate: warning: the device profile timed {out['profile_threads']} thread(s), this run "
                      f"{out['threads']} (pass threads={out['profile_threads']})")
    if out["profile_clock"] not in (None, out["clock"]):
        console.print(f"evaluate: warning: the device profile timed with the {out['profile_clock']} clock, this run "
                      f"with the {out['clock']} clock (pass clock={out['profile_clock']})")


def _device(cfg: DictConfig, console: Console) -> torch.device:
    """The device of ``device=`` (enas4d-search's values and checks). With backend=onnx, ``auto`` is the
    CPU unless onnxruntime has its CUDA provider; an explicit ``cuda`` without it is an ExportError.
    With backend=pt2, ``auto`` is the CPU (an explicit ``cuda`` is refused when the model loads)."""
    asked = cfg.get("device", "cpu")
    device = resolve_device(asked, ExportError)
    if device.type == "cuda" and cfg.backend == "pt2" and str(asked).strip().lower() == "auto":
        console.print("evaluate: device=auto: the pt2 backend runs on the CPU")
        return torch.device("cpu")
    if device.type == "cuda" and cfg.backend == "onnx":
        try:
            onnx_providers(device)
        except ExportError:
            if str(asked).strip().lower() != "auto":
                raise
            console.print("evaluate: device=auto: onnxruntime has no CUDA provider here; the onnx backend runs on "
                          "the CPU")
            return torch.device("cpu")
    return device


def evaluate(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """Evaluate the export folder ``cfg.model``; returns (and writes to ``cfg.out``) the metrics."""
    console = console or Console()
    for key in ("eval_batch_size", "timing_images", "timing_max_batches", "repeats"):
        positive_int(cfg, key, ExportError)
    sizes = list(cfg.batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ExportError(f"batch_sizes: expected a non-empty list of integers >= 1, got {sizes}")
    threads = None if cfg.threads is None else positive_int(cfg, "threads", ExportError)
    if cfg.clock not in CLOCKS:
        raise ExportError(f"clock: {cfg.clock!r} not allowed; allowed values: {list(CLOCKS)}")
    device = _device(cfg, console)
    if threads is not None:
        torch.set_num_threads(threads)
    meta, predict = load_model(str(cfg.model), str(cfg.backend), threads, device)
    lat = _latency_setup(cfg, meta, console)
    dm = _datamodule(cfg, meta)
    exit_macs = meta["exit_macs"]

    # Accuracy pass (streamed), keeping the first images for the timing set.
    need = min(int(cfg.timing_images), int(cfg.timing_max_batches) * max(sizes + ([lat.batch_size] if lat else [])))
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
    ref = reference_for(meta, str(cfg.backend), threads, device) if cfg.reference else None
    clock = timer(str(cfg.clock), threads)
    rows = []

    def timing_set(bs: int) -> Tensor:
        return _timing_images(kept, max(bs, min(int(cfg.timing_images), int(cfg.timing_max_batches) * bs)))

    for bs in sizes:
        images = timing_set(bs)
        rows.append(throughput(predict, images, bs, len(exit_macs), exit_macs, repeats=int(cfg.repeats),
                               reference=None if ref is None else ref.run,
                               reference_macs=None if ref is None else ref.macs, clock=clock))
    latency = None
    if lat is not None:
        timed = measure_latency(predict, timing_set(lat.batch_size), lat.batch_size, len(exit_macs),
                                repeats=int(cfg.repeats), clock=clock)
        latency = _latency_report(lat, meta, timed, str(cfg.clock), str(cfg.backend),
                                  torch.get_num_threads() if cfg.backend in TORCH_BACKENDS else threads)
    target = float(cfg.target_ratio)
    metrics = {
        "model": os.path.abspath(str(cfg.model)),
        "backend": str(cfg.backend),
        "device": str(device),
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
        "clock": str(cfg.clock),
        # predicted vs measured average latency per image (None without a device profile)
        "latency": latency,
        "threads": torch.get_num_threads() if cfg.backend in TORCH_BACKENDS else threads,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
    }
    console.print(exit_table(meta, report, title=f"{meta['supernet']['name']} early exit on {dm.name} "
                                                  f"validation ({report['num_images']} images, {cfg.backend}, "
                                                  f"{device})"))
    console.print(throughput_table(rows, target))
    ratios = ", ".join(f"batch {r['batch_size']}: {r['ratio']:.2f}" for r in rows)
    console.print(f"evaluate: {'wall-clock' if cfg.clock == 'wall' else 'CPU-time'} speed-up / MACs reduction = "
                  f"{ratios} (target >= {target})")
    if ref is not None:
        console.print(reference_table(rows, ref))
        real = ", ".join(f"batch {r['batch_size']}: {r['speedup_vs_reference']:.2f}x" for r in rows)
        console.print(f"evaluate: speed-up against the plain network = {real} (below 1: slower than it)")
    elif cfg.reference:
        console.print(f"evaluate: no plain reference network for {meta.get('supernet', {}).get('name')!r} "
                      "(transformed from a graph)")
    if latency is not None:
        _print_latency(latency, console)
    out = Path(str(cfg.out))
    write_json(out, metrics)  # atomic: never a half-written metrics.json
    console.print(f"evaluate: wrote {out}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the accuracy (for sweepers). Bad input: one line, exit 2."""
    with one_line_errors("enas4d-evaluate", ExportError, LatencyError):
        metrics = evaluate(cfg)
    return float(metrics["accuracy"])


if __name__ == "__main__":
    main()
