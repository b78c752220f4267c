"""Export a searched subnet into a self-contained early-exit model folder.

The folder (``out``) holds::

    model.ts         TorchScript: logits, exit_index = m(x), x float (N, C, H, W) in [0, 1]
    onnx/            preprocess.onnx, stage_<k>.onnx and manifest.json (see onnx_export.py)
    onnx_runner.py   numpy + onnxruntime early-exit runner for the graphs (a copy of ours)
    pt2/             preprocess.pt2, stage_<k>.pt2 and manifest.json: the same split as torch.export
                     programs (see pt2_export.py)
    pt2_runner.py    torch + numpy early-exit runner for the programs (a copy of ours)
    subnet.json      what the model is: subnet, thresholds, MACs per exit, data, provenance, and
                     (from a search with a device profile) its predicted latency per image
    README.md        model card: table of exits with MACs, exit rate and validation accuracy

It is written into a temporary sibling folder and moved into place only once complete, so a
failed export never leaves a half-written folder. An existing non-empty ``out`` is replaced only
when it holds an earlier export (its ``subnet.json`` says so) and ``overwrite`` is set; any other
folder is refused. Temporary siblings are named ``.<out>.tmp-<host>.<pid>.<random>`` (and
``.<out>.old-...`` for the export being replaced), so a later export to the same ``out`` can tell
those of a process that no longer runs and remove them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

import enas4d
from enas4d.export import onnx_runner, pt2_runner
from enas4d.export.card import model_card
from enas4d.export.choice import SearchChoice, check_thresholds, exit_thresholds, latency_info, load_result, read_result
from enas4d.export.early_exit import EarlyExitNet, build_early_exit
from enas4d.export.errors import ExportError
from enas4d.export.jit import quiet_torchscript
from enas4d.export.metrics import exit_report
from enas4d.export.onnx_export import export_onnx
from enas4d.export.pt2_export import export_pt2
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.bn import reestimate_bn
from enas4d.utils.files import make_temp_dir, write_json
from enas4d.space import Subnet

# Defined in choice.py, card.py and errors.py, importable from here as before.
__all__ = ["CHECK_ATOL", "DECISION_MARGIN", "EXPORT_FORMAT", "EXPORT_VERSION", "DataInfo", "ExportError",
           "SearchChoice", "check_decisions", "check_out_dir", "check_thresholds", "count_stage_macs",
           "exit_thresholds", "export_subnet", "is_export", "latency_info", "load_result", "model_card",
           "read_export", "read_result", "remove_stale_temps"]

EXPORT_FORMAT = "enas4d-export"  # marker in subnet.json: this folder is an enas4d export
EXPORT_VERSION = 1
# Export-time consistency checks between supernet, eager, TorchScript, ONNX and torch.export logits.
CHECK_ATOL = 1e-3
# An ONNX decision may differ from TorchScript's only for an image whose confidence is this close
# to the threshold (float rounding of two runtimes); anything else is an export bug.
DECISION_MARGIN = 1e-4


@dataclass(frozen=True)
class DataInfo:
    """What the exported model records about the data it was trained on."""

    name: str  # datamodule registry name
    cfg: dict[str, Any]  # its configuration, as stored in the checkpoint
    mean: list[float]  # per-channel mean of [0, 1] pixels
    std: list[float]  # per-channel standard deviation
    class_names: list[str]

# ----------------------------------------------------------------------------- output folder
def read_export(path: str | os.PathLike) -> dict[str, Any] | None:
    """``subnet.json``'s content if ``path`` is a folder written by :func:`export_subnet`, else None."""
    try:
        meta = json.loads((Path(path) / "subnet.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`export_subnet`."""
    return read_export(path) is not None


def check_out_dir(out: Path, overwrite: bool, protect: Iterable[Path] = ()) -> None:
    """Refuse an output folder that may not be (re)written; see the module docstring."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"out: {str(out)!r} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_export(out):  # overwrite=true or not: only an earlier export is ever replaced
        raise ExportError(f"out: {str(out)!r} exists and is not an enas4d export (no subnet.json of one); "
                          "choose a new or empty folder (overwrite=true replaces only an earlier export)")
    if not overwrite:
        raise ExportError(f"out: {str(out)!r} holds an earlier export; pass overwrite=true to replace it")
    # overwrite=true replaces the whole folder: never one that holds the inputs or the caller.
    guarded = [Path.cwd(), *protect]
    for p in guarded:
        p = p.resolve()
        if p == out or out in p.parents:
            raise ExportError(f"out: refusing to replace {str(out)!r}: it contains {str(p)!r}")
    if (out / ".git").exists():
        raise ExportError(f"out: refusing to replace {str(out)!r}: it is a git repository")


def _host_tag() -> str:
    """This machine's name as it appears in temporary folder names (letters, digits and '-')."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def _make_temp(out: Path, kind: str) -> Path:
    """A new ``.<out>.<kind>-<host>.<pid>.<random>`` folder beside ``out`` (``kind``: tmp or old)."""
    return make_temp_dir(out.parent, f".{out.name}.{kind}-{_host_tag()}.{os.getpid()}.")


def _stale_temp(out: Path, path: Path) -> str | None:
    """``"tmp"`` or ``"old"`` if ``path`` is a temporary sibling of ``out`` whose export no longer
    runs, else None. Folders from before names carried the process count as stale."""
    m = re.fullmatch(rf"\.{re.escape(out.name)}\.(?P<kind>tmp|old)-(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\."
                     r"[0-9a-f]{8}|[a-z0-9_]{8})", path.name)
    if m is None or path.is_symlink() or not path.is_dir():
        return None
    if m["pid"] is not None and (m["host"] != _host_tag() or _process_alive(int(m["pid"]))):
        return None
    return m["kind"]


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (assumed so where that cannot be asked safely)."""
    if os.name != "posix":
        return True  # os.kill would terminate it on Windows
    if pid == os.getpid():
        return True  # ours: this process may be exporting to ``out`` in another thread
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(out: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``out`` that interrupted exports left; returns them.

    Only folders named as :func:`_make_temp` names them are touched, and only those of processes
    that no longer run on this machine (or made before names carried the process). If a
    replacement was interrupted after the earlier export was moved aside, and ``out`` is missing,
    that export is moved back first.
    """
    out = Path(out).resolve()
    if not out.parent.is_dir():
        return []
    removed = []
    for p in sorted(out.parent.iterdir()):
        kind = _stale_temp(out, p)
        if kind is None:
            continue
        if kind == "old" and not out.exists() and is_export(p / out.name):
            os.rename(p / out.name, out)
        shutil.rmtree(p, ignore_errors=True)  # one that cannot be removed is no reason to fail
        if not p.exists():
            removed.append(p)
    return removed


def _commit_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing what was there."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = _make_temp(out, "old")
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / out.name, out)  # put the earlier folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ checks
def count_stage_macs(model: EarlyExitNet) -> list[int]:
    """MACs per image of every stage (body increment + its exit head), by torch.utils.flop_counter."""
    img = torch.zeros(1, model.in_chans, model.resolution, model.resolution)
    prev: list[Tensor] = []
    macs = []
    with torch.no_grad():
        for stage in model.stages:
            with FlopCounterMode(display=False) as counter:
                _, prev = stage(img, prev)
            flops = counter.get_total_flops()
            macs.append(flops // 2)  # conv and matmul FLOPs are 2 x MACs
    return macs


def _max_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return max(float((u - v).abs().max()) if u.numel() else 0.0 for u, v in zip(a, b))


@torch.no_grad()
def check_decisions(model: EarlyExitNet, ref: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor],
                    all_logits: Sequence[Tensor], what: str) -> dict[str, Any]:
    """Compare early-exit outputs of two runtimes; raise ExportError on a real disagreement.

    ``all_logits`` are ``model``'s per-exit logits of the same images, used to tell a decision
    flipped by float rounding at the threshold (allowed, counted) from a wrong one.
    """
    thresholds = model.thresholds.tolist()
    (lr, er), (lo, eo) = ref, other
    differ = er != eo
    for i in torch.nonzero(differ)[:, 0].tolist():
        e = min(int(er[i]), int(eo[i]))  # the earlier of the two exits made the contested decision
        conf = float(model.confidence(all_logits[e][i:i + 1])[0])
        if abs(conf - thresholds[e]) > DECISION_MARGIN:
            raise ExportError(f"{what}: image {i} exits at {int(eo[i])} instead of {int(er[i])} "
                              f"(confidence {conf:.6f}, threshold {thresholds[e]:.6f})")
    same = ~differ
    diff = float((lr[same] - lo[same]).abs().max()) if bool(same.any()) else 0.0
    if diff > CHECK_ATOL:
        raise ExportError(f"{what}: logits differ from the eager model by {diff:.2e} (> {CHECK_ATOL})")
    return {"max_abs_diff": diff, "decisions_flipped_at_threshold": int(differ.sum())}


# -------------------------------------------------------------------------------- model card
# ------------------------------------------------------------------------------------ export
@torch.no_grad()
def export_subnet(net: MultiStageSupernet, subnet: Subnet, thresholds: Sequence[float], out: str | os.PathLike, *,
                  confidence: str, data: DataInfo, bn_batches: Iterable[Any],
                  val_batches: Iterable[tuple[Tensor, Tensor]] | None,
                  check_images: Tensor, checkpoint: str, checkpoint_sha256: str | None = None,
                  result: str | None = None,
                  search_info: dict[str, Any] | None = None, latency: dict[str, Any] | None = None,
                  supernet_meta: dict[str, Any] | None = None,
                  fold_bn: bool = True, onnx: bool = True, opset: int = 17, pt2: bool = True,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write the early-exit model of ``subnet`` into the folder ``out``; returns its ``subnet.json``.

    Args:
        net: the supernet with its trained weights.
        subnet: the chosen subnet (exits included).
        thresholds: one per enabled exit (see :func:`exit_thresholds`).
        confidence: the confidence measure the thresholds apply to (see ``CONFIDENCES``).
        out: output folder; see :func:`check_out_dir` for when an existing one is accepted.
        data: mean/std/class names the model normalises with and records.
        bn_batches: normalised batches (or ``(x, y)``) to re-estimate BatchNorm statistics on.
        val_batches: ``(x in [0, 1], y)`` batches of the validation split for the model card, or None.
        check_images: (M, C, H, W) images in [0, 1] on which supernet, eager, TorchScript, ONNX
            and torch.export outputs are compared (export fails if they disagree).
        checkpoint: path of the checkpoint, recorded in ``subnet.json``.
        checkpoint_sha256: its content hash, recorded.
        result: path of the search result, recorded.
        search_info: numbers from the search result worth recording.
        latency: the search's latency prediction (:func:`latency_info`), recorded as ``latency``.
        supernet_meta: the checkpoint's supernet entry (name, num_classes, ...); default from ``net``.
        fold_bn: fold BatchNorm into the convolutions.
        onnx: also write the ONNX graphs and runner.
        opset: ONNX opset.
        pt2: also write the ``torch.export`` programs and runner.
        overwrite: replace an existing folder (never one holding the inputs or the cwd).
    """
    out = Path(out).resolve()
    protect = [Path(checkpoint)] + ([Path(result)] if result else [])
    remove_stale_temps(out)
    check_out_dir(out, overwrite, protect)
    thresholds = _check_inputs(net, subnet, thresholds, check_images)
    model = _extract(net, subnet, thresholds, confidence, data, bn_batches, fold_bn)
    ver = _verify_eager(net, subnet, model, data, check_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp(out, "tmp")  # the user's usual folder permissions, not mkdtemp's 0700
    try:
        files, scripted = _write_formats(tmp, model, ver, onnx, opset, pt2)
        # The model card's numbers, from the saved TorchScript model.
        validation = None
        if val_batches is not None:
            validation = exit_report(lambda b, t: scripted(b), val_batches, ver.exit_macs, scripted.all_exits)
        meta = {**_describe(net, subnet, thresholds, confidence, model, data, ver, supernet_meta),
                **_provenance(checkpoint, checkpoint_sha256, result, search_info, latency),
                **_outputs(fold_bn, files, validation, ver)}
        _finish(tmp, out, meta, overwrite, protect)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


@dataclass
class _Verified:
    """The exported model's outputs on the check images, and the checks it passed so far."""

    x: Tensor  # the check images, float
    eager: tuple[Tensor, Tensor]  # the eager model's (logits, exit index)
    eager_exits: list[Tensor]  # its logits at every exit
    checks: dict[str, Any]  # subnet.json's ``checks`` (the runtimes' comparisons are added)
    stage_macs: list[int]  # analytic MACs per stage (body + enabled head)
    counted: list[int]  # the same counted by torch.utils.flop_counter
    exit_macs: list[int]  # cumulative MACs per enabled exit


def _check_inputs(net: MultiStageSupernet, subnet: Subnet, thresholds: Sequence[float],
                  check_images: Tensor) -> list[float]:
    """The thresholds as floats, once subnet, thresholds and check images are known to be usable."""
    net.space.validate(subnet)
    thresholds = check_thresholds(thresholds)
    if len(thresholds) != sum(subnet.exits):
        raise ExportError(f"thresholds: expected {sum(subnet.exits)} values (one per enabled exit), got {thresholds}")
    if check_images.dim() != 4 or check_images.shape[0] == 0:
        raise ExportError(f"check_images: expected a non-empty (M, C, H, W) batch, got {list(check_images.shape)}")
    return thresholds


def _extract(net: MultiStageSupernet, subnet: Subnet, thresholds: list[float], confidence: str, data: DataInfo,
             bn_batches: Iterable[Any], fold_bn: bool) -> EarlyExitNet:
    """The subnet with BatchNorm statistics of its own, then the standalone model."""
    net.set_subnet(subnet)
    reestimate_bn(net, bn_batches)
    net.eval()
    return build_early_exit(net.extract(subnet), data.mean, data.std, thresholds, net.num_classes, confidence,
                            fold_bn)


def _verify_eager(net: MultiStageSupernet, subnet: Subnet, model: EarlyExitNet, data: DataInfo,
                  check_images: Tensor) -> _Verified:
    """Eager export == supernet, per exit; MACs per stage analytic (supernet) == counted (export)."""
    x = check_images.float()
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    ref_exits = net((x - mean) / std)
    eager_exits = model.all_exits(x)
    checks: dict[str, Any] = {"images": int(x.shape[0]), "supernet_vs_export": _max_diff(ref_exits, eager_exits)}
    if checks["supernet_vs_export"] > CHECK_ATOL:
        raise ExportError(f"check: exported logits differ from the supernet's by {checks['supernet_vs_export']:.2e}")
    eager = model(x)
    body, heads = net.stage_macs(subnet)
    analytic = [b + (h if on else 0) for b, h, on in zip(body, heads, subnet.exits)]
    counted = count_stage_macs(model)
    if counted != analytic:
        raise ExportError(f"check: MACs per stage counted by torch.utils.flop_counter {counted} differ from the "
                          f"analytic {analytic}")
    return _Verified(x, eager, eager_exits, checks, analytic, counted, net.macs(subnet))


def _write_formats(tmp: Path, model: EarlyExitNet, ver: _Verified, onnx: bool,
                   opset: int, pt2: bool) -> tuple[dict[str, str], Any]:
    """TorchScript (and the ONNX graphs, the torch.export programs and their runners) written into
    ``tmp``, each reloaded and compared.

    Returns subnet.json's ``files`` and the reloaded TorchScript model.
    """
    with quiet_torchscript():  # torch.jit is deprecated, still the contract: only its notices are hidden
        torch.jit.script(model).save(os.fspath(tmp / "model.ts"))
        scripted = torch.jit.load(os.fspath(tmp / "model.ts"))
    ver.checks["torchscript"] = check_decisions(model, ver.eager, scripted(ver.x), ver.eager_exits,
                                                "check: TorchScript")
    files = {"torchscript": "model.ts"}
    if onnx:
        (tmp / "onnx").mkdir()
        export_onnx(model, tmp / "onnx", opset)
        shutil.copyfile(onnx_runner.__file__, tmp / "onnx_runner.py")
        runner = onnx_runner.OnnxEarlyExit(os.fspath(tmp))
        lo, eo = runner(ver.x.numpy())
        ver.checks["onnx"] = check_decisions(model, ver.eager, (torch.from_numpy(lo), torch.from_numpy(eo)),
                                             ver.eager_exits, "check: ONNX")
        files.update(onnx="onnx/manifest.json", onnx_runner="onnx_runner.py")
    if pt2:
        (tmp / "pt2").mkdir()
        export_pt2(model, tmp / "pt2")
        shutil.copyfile(pt2_runner.__file__, tmp / "pt2_runner.py")
        ver.checks["pt2"] = check_decisions(model, ver.eager, pt2_runner.Pt2EarlyExit(os.fspath(tmp))(ver.x),
                                            ver.eager_exits, "check: torch.export")
        files.update(pt2="pt2/manifest.json", pt2_runner="pt2_runner.py")
    return files, scripted


def _describe(net: MultiStageSupernet, subnet: Subnet, thresholds: list[float], confidence: str,
              model: EarlyExitNet, data: DataInfo, ver: _Verified,
              supernet_meta: dict[str, Any] | None) -> dict[str, Any]:
    """subnet.json's first part: what the model is, what it takes and what it was cut from."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "subnet": subnet.to_dict(),
        "thresholds": thresholds,
        "confidence": confidence,
        "exit_rule": "an exit accepts an image when its confidence >= its threshold; the last accepts all",
        "exit_stages": list(model.exit_stages),
        "exit_macs": ver.exit_macs,
        "stage_macs": ver.stage_macs,
        "resolution": subnet.resolution,
        "in_chans": net.in_chans,
        "num_classes": net.num_classes,
        "input": "float tensor (N, in_chans, H, W) with values in [0, 1]; resized and normalised inside",
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": list(data.class_names),
        "supernet": supernet_meta or {"name": net.name, "num_classes": net.num_classes,
                                      "num_stages": net.num_stages, "in_chans": net.in_chans},
        "space": net.space.to_config(),
        "data": {"name": data.name, "cfg": data.cfg, "mean": list(data.mean), "std": list(data.std),
                 "class_names": list(data.class_names)},
    }


def _provenance(checkpoint: str, checkpoint_sha256: str | None, result: str | None,
                search_info: dict[str, Any] | None, latency: dict[str, Any] | None) -> dict[str, Any]:
    """subnet.json's second part: the inputs it came from and the search's numbers."""
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "result": os.path.abspath(result) if result else None,
        "search": dict(search_info or {}),
        "latency": None if latency is None else dict(latency),  # predicted by the search's device profile
    }


def _outputs(fold_bn: bool, files: dict[str, str], validation: dict[str, Any] | None,
             ver: _Verified) -> dict[str, Any]:
    """subnet.json's last part: the files written, the numbers measured and the versions."""
    return {
        "fold_bn": fold_bn,
        "files": files,
        "validation": validation,
        "checks": {**ver.checks, "flop_counter_stage_macs": ver.counted},
        "torch_version": torch.__version__,
        "enas4d_version": enas4d.__version__,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def _finish(tmp: Path, out: Path, meta: dict[str, Any], overwrite: bool, protect: list[Path]) -> None:
    """Write the model card and subnet.json into ``tmp``, then move it to ``out``."""
    (tmp / "README.md").write_text(model_card(meta))
    write_json(tmp / "subnet.json", meta)  # written last: its marker makes the folder an export
    check_out_dir(out, overwrite, protect)  # again: the folder may have changed during the export
    _commit_dir(tmp, out)
