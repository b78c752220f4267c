"""``enas4d-export``: the searched subnet as a standalone early-exit model folder.

    enas4d-export ckpt=outputs/demo/train/checkpoints/last.ckpt \\
        result=outputs/demo/search/result.json out=outputs/demo/export

The supernet, its weights and the data (the training run's split and normalisation) are rebuilt
from the checkpoint; the subnet, thresholds and confidence measure come from the search's
``result.json``. BatchNorm statistics are re-estimated on the same BN estimation subset the search
used (``bn`` settings), so the exported model is the network the search scored. :func:`export`
is the importable function; :func:`main` the thin Hydra entry point. Settings: conf/export.yaml.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from enas4d.checkpoint import CheckpointError, build_datamodule, load_supernet
from enas4d.export.exporter import (DataInfo, ExportError, check_out_dir, export_subnet, load_result, read_result,
                                    remove_stale_temps)
from enas4d.export.metrics import to_unit
from enas4d.export.report import exit_table
from enas4d.search.result import SearchResult
from enas4d.space import InvalidSubnetError
from enas4d.utils import rebatch
from enas4d.utils.cli import CONF_DIR, one_line_errors, positive_int
from enas4d.utils.files import file_digest

__all__ = ["CONF_DIR", "export", "main"]



def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same existing file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _file_state(path: str) -> tuple[int, ...] | None:
    """What changes when a file is rewritten or replaced (device, inode, size, mtime), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_checkpoint_digest(ckpt: str, res: SearchResult, allow_other: bool, console: Console) -> str | None:
    """sha256 of ``ckpt``, refused (ExportError) if it is not the one the search recorded in ``res``.

    None when there is no file (loading it then gives the clear error). A result without
    ``checkpoint_sha256`` (from an older enas4d-search) is accepted with a warning.
    """
    expected = res.checkpoint_sha256  # its form is checked when the result is read
    if not os.path.isfile(ckpt):
        return None
    digest = file_digest(ckpt)
    if expected is None:
        console.print("export: warning: the result records no checkpoint_sha256 (an older enas4d-search), so it "
                      "cannot be checked that its thresholds belong to these weights")
    elif digest != expected and not allow_other:
        raise ExportError(f"ckpt: {ckpt!r} has other content (sha256 {digest[:12]}...) than the checkpoint the "
                          f"search scored (sha256 {expected[:12]}...); run enas4d-search again on it, or pass "
                          "allow_other_ckpt=true to export anyway (its thresholds may not fit these weights)")
    elif digest != expected:
        console.print(f"export: warning: {ckpt!r} is not the checkpoint the search scored (sha256 differs); "
                      "exporting it anyway (allow_other_ckpt=true)")
    return digest


DEFAULT_BN_IMAGES, DEFAULT_BN_BATCH_SIZE = 1000, 200  # the search's defaults (conf/search.yaml)


def export(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """Export ``cfg.result``'s subnet of ``cfg.ckpt`` into ``cfg.out``; returns ``subnet.json``'s content."""
    old_threads = torch.get_num_threads()  # cfg.threads applies while it runs, not after
    try:
        return _export(cfg, console)
    finally:
        torch.set_num_threads(old_threads)


def _export(cfg: DictConfig, console: Console | None) -> dict[str, Any]:
    from enas4d.nn.bn import BNEstimationSet

    console = console or Console()
    for key in ("eval_batch_size", "check_images", "opset") + \
            tuple(f"bn.{k}" for k in ("images", "batch_size") if cfg.bn[k] is not None):
        positive_int(cfg, key, ExportError)
    if cfg.threads is not None:
        torch.set_num_threads(positive_int(cfg, "threads", ExportError))
    out = Path(str(cfg.out))
    result_path = str(cfg.result)
    # Fail on the output folder before any expensive work (after putting back or removing what an
    # interrupted export to it left).
    remove_stale_temps(out)
    check_out_dir(out.resolve(), bool(cfg.overwrite), [Path(result_path)] + ([Path(str(cfg.ckpt))] if cfg.ckpt else []))
    res = load_result(result_path)
    searched_ckpt = res.checkpoint  # the search's checkpoint: the default, and a mismatch caught early
    ckpt = str(cfg.ckpt) if cfg.ckpt is not None else searched_ckpt
    if ckpt is None:
        raise ExportError("ckpt: not given and the result names no checkpoint; pass ckpt=PATH")
    if searched_ckpt is not None and os.path.exists(searched_ckpt) and not _same_file(ckpt, searched_ckpt) \
            and not cfg.allow_other_ckpt:
        raise ExportError(f"ckpt: the result was searched on {searched_ckpt!r}, not {ckpt!r}; its thresholds "
                          "belong to those weights (pass allow_other_ckpt=true to export anyway)")

    before = _file_state(ckpt)
    digest = check_checkpoint_digest(ckpt, res, bool(cfg.allow_other_ckpt), console)
    net, meta = load_supernet(ckpt)
    if _file_state(ckpt) != before:
        raise ExportError(f"ckpt: {ckpt!r} changed while it was read (is a training run writing it?); "
                          "export again once it is written")
    choice = read_result(result_path, net, res)
    overrides = OmegaConf.to_container(cfg.data_overrides, resolve=True) or {}
    try:
        dm = build_datamodule(meta, dict(overrides))
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    searched_bn = res.bn  # None from a version-1 result without it: the search's defaults
    bn_images = int(cfg.bn.images if cfg.bn.images is not None
                    else DEFAULT_BN_IMAGES if searched_bn is None else searched_bn.images)
    bn_batch = int(cfg.bn.batch_size if cfg.bn.batch_size is not None
                   else DEFAULT_BN_BATCH_SIZE if searched_bn is None else searched_bn.batch_size)
    if searched_bn is not None and (bn_images, bn_batch) != (searched_bn.images, searched_bn.batch_size):
        console.print(f"export: warning: BatchNorm re-estimated on {bn_images} images in batches of {bn_batch}, the "
                      f"search used {dataclasses.asdict(searched_bn)}; the exported model is not exactly the network "
                      "it scored")
    bn_set = BNEstimationSet(dm.bn_dataloader(num_images=bn_images, batch_size=bn_batch))
    # The first validation images, for the equivalence checks.
    first = next(rebatch(dm.val_dataloader(), int(cfg.check_images)), None)
    if first is None:
        raise ExportError("data: the validation split is empty")
    check = to_unit(first[0], dm.mean, dm.std)
    # Streamed (an ImageNet validation split does not fit in memory as floats).
    val = ((to_unit(x, dm.mean, dm.std), y) for x, y in rebatch(dm.val_dataloader(), int(cfg.eval_batch_size)))
    data = DataInfo(name=str(meta.data["name"]), cfg=dict(meta.data["cfg"]), mean=list(meta.data["mean"]),
                    std=list(meta.data["std"]), class_names=[str(c) for c in meta.data["class_names"]])
    console.print(f"export: {net.name} subnet from {result_path} ({choice.confidence} thresholds "
                  f"{[round(t, 4) for t in choice.thresholds]}) -> {out}")
    result = export_subnet(
        net, choice.subnet, choice.thresholds, out, confidence=choice.confidence, data=data,
        bn_batches=bn_set.batches, val_batches=val if cfg.validate else None, check_images=check,
        checkpoint=ckpt, checkpoint_sha256=digest, result=result_path, search_info=choice.info, latency=choice.latency,
        supernet_meta=dict(meta.supernet),
        fold_bn=bool(cfg.fold_bn), onnx=bool(cfg.onnx), opset=int(cfg.opset), pt2=bool(cfg.pt2),
        overwrite=bool(cfg.overwrite))
    val_report = result["validation"]
    if val_report is not None:
        console.print(exit_table(result, val_report, title=f"exported model on {val_report['num_images']} "
                                                           "validation images"))
        searched = res.val_accuracy
        if searched is not None and abs(searched - val_report["accuracy"]) > 1e-9:
            console.print(f"[yellow]export: validation accuracy {val_report['accuracy']:.4f} differs from the "
                          f"search's {searched:.4f} (other bn settings or data than the search used?)[/yellow]")
    console.print(f"export: wrote {out}/ ({', '.join(sorted(result['files'].values()))}, subnet.json, README.md)")
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: one clear line and exit status 2 on bad input."""
    with one_line_errors("enas4d-export", ExportError, CheckpointError, InvalidSubnetError):
        export(cfg)


if __name__ == "__main__":
    main()
