"""``enas4d-train``: train an elastic multi-stage supernet from a Hydra config (``conf/train.yaml``).

Examples::

    enas4d-train                                          # digits, resnet_cifar, 3 exits
    enas4d-train experiment=digits_demo hydra.run.dir=outputs/demo/train
    enas4d-train -m data=digits supernet.num_stages=2,3 trainer.max_epochs=1
    enas4d-train hydra.run.dir=DIR ckpt_path=DIR/checkpoints/last.ckpt   # resume exactly

A run's folder (Hydra's run dir) holds ``config.yaml`` (resolved), ``checkpoints/last.ckpt`` and the
best checkpoint, ``csv/metrics.csv`` and ``tensorboard/``. :func:`train` is importable (tests call
it with a composed config); :func:`main` is the thin command-line wrapper.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from enas4d.checkpoint import CheckpointError, read_checkpoint
from enas4d.models import MultiStageSupernet, create_supernet
from enas4d.utils.cli import CONF_DIR, one_line_errors
from enas4d.utils.files import write_atomic

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from enas4d.training.module import SupernetModule

# Lightning (and enas4d.training, which imports it) take ~10 s to import on a small machine, so
# they are imported inside build(): a bad override or --help answers without that wait.

__all__ = ["CONF_DIR", "TrainInterrupted", "TrainSetupError", "build", "data_meta", "main", "train"]

log = logging.getLogger(__name__)



class TrainSetupError(Exception):
    """Bad input found while building the run (config value, data path, checkpoint): one clear line."""


class TrainInterrupted(RuntimeError):
    """The run stopped before its end (SIGTERM); its last.ckpt resumes it."""


def data_meta(dm: Any, data_cfg: DictConfig) -> dict[str, Any]:
    """The checkpoint's ``data`` entry: enough for ``create_datamodule(name, **cfg)`` to rebuild ``dm``.

    ``cfg`` is the data config without ``_target_``, with the normalisation statistics filled in
    so the rebuilt datamodule normalises exactly as training did.
    """
    cfg = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(cfg, dict)
    cfg.pop("_target_", None)
    cfg["mean"], cfg["std"] = list(dm.mean), list(dm.std)
    return {"name": dm.name, "cfg": cfg, "mean": list(dm.mean), "std": list(dm.std),
            "class_names": list(dm.class_names), "image_size": int(dm.image_size)}


def _instantiate_dict(nodes: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a name -> config dict (callbacks, loggers)."""
    if not nodes:
        return []
    return [hydra.utils.instantiate(node) for node in nodes.values() if node is not None]


def build(cfg: DictConfig) -> dict[str, Any]:
    """Build datamodule, supernet, module and trainer from ``cfg``; bad input raises TrainSetupError.

    The data are loaded here (``setup``), so a missing data path fails before anything trains.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor

    from enas4d.training.checkpoint_io import AtomicCheckpointIO
    from enas4d.training.module import check_meta_compatible

    try:
        pl.seed_everything(cfg.seed, workers=True)  # the supernet's initial weights
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("fit")
        teacher_net: MultiStageSupernet | None = None
        fine_tuning: dict[str, Any] = {}  # frozen entries and trained stages of a grown S2DNAS supernet
        if cfg.supernet.name == "from_static":  # S2DNAS: split a trained static network (conf/supernet/from_static.yaml)
            from enas4d.transform.sources import training_from_config, transformed_from_config

            net, teacher_net = transformed_from_config(cfg.supernet, dm.num_classes, dm.in_chans, dm.image_size)
            fine_tuning = training_from_config(cfg.supernet, net)
        else:
            net = create_supernet(cfg.supernet.name, num_classes=dm.num_classes,
                                  num_stages=cfg.supernet.num_stages, in_chans=dm.in_chans)
        if cfg.ckpt_path is not None:
            ckpt, _ = read_checkpoint(cfg.ckpt_path)
            check_meta_compatible(ckpt["enas4d"], net, dm.num_classes, repr(str(cfg.ckpt_path)))
        module: SupernetModule = hydra.utils.instantiate(cfg.module, net=net, data_meta=data_meta(dm, cfg.data),
                                                         teacher_net=teacher_net, **fine_tuning)
        callbacks = _instantiate_dict(cfg.callbacks)
        loggers = _instantiate_dict(cfg.logger)
        if not loggers:  # Lightning refuses a LearningRateMonitor without a logger (logger=none)
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        # Checkpoints are written to a temporary file, then renamed (a crash never corrupts last.ckpt).
        trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                      plugins=[AtomicCheckpointIO()])
    except InstantiationException as e:
        # Hydra wraps the constructor's own error; its cause is the message worth showing.
        cause = e.__cause__ if e.__cause__ is not None else e
        raise TrainSetupError(f"{type(cause).__name__}: {cause}".replace("\n", " ")) from e
    except (ValueError, OSError, CheckpointError) as e:
        raise TrainSetupError(f"{type(e).__name__}: {e}".replace("\n", " ")) from e
    return {"datamodule": dm, "net": net, "module": module, "callbacks": callbacks, "loggers": loggers,
            "trainer": trainer}


def _save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config atomically (temp file in the same folder, then rename)."""
    write_atomic(path, OmegaConf.to_yaml(cfg, resolve=True).encode("utf-8"))


def summary_rows(module: SupernetModule, metrics: dict[str, float]) -> list[tuple[str, int, int, float | None]]:
    """(subnet, exit, cumulative MACs per image, val accuracy) of the module's validated subnets."""
    rows = []
    for name, s in module.val_subnets.items():  # every exit enabled
        for k, macs in enumerate(module.net.macs(s)):
            rows.append((name, k + 1, macs, metrics.get(f"val/{name}/exit{k + 1}")))
    return rows


def _print_summary(module: SupernetModule, metrics: dict[str, float]) -> None:
    """Rich table of per-exit MACs and validation accuracy."""
    from rich.console import Console
    from rich.table import Table

    net = module.net
    table = Table(title=f"{net.name}, {net.num_stages} exits: validation accuracy per exit")
    for col in ("subnet", "exit", "MACs/image", "val acc"):
        table.add_column(col, justify="right")
    for name, k, macs, acc in summary_rows(module, metrics):
        table.add_row(name, str(k), f"{macs / 1e6:.2f}M", "-" if acc is None else f"{100 * acc:.2f}%")
    Console().print(table)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train (or resume, with ``cfg.ckpt_path``) a supernet; returns (final metrics, built objects).

    ``cfg.torch_threads`` applies while it runs; the caller's thread count is restored after.
    """
    old_threads = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(int(cfg.torch_threads))
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    objects = build(cfg)
    trainer: pl.Trainer = objects["trainer"]
    if trainer.is_global_zero:
        _save_config(cfg, Path(cfg.paths.output_dir) / "config.yaml")
    log.info("run folder: %s", cfg.paths.output_dir)
    try:
        with warnings.catch_warnings():
            # The frozen distillation teacher runs in eval mode on purpose; Lightning warns about it.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
            trainer.fit(objects["module"], datamodule=objects["datamodule"], ckpt_path=cfg.ckpt_path)
    except CheckpointError as e:  # a checkpoint this run cannot continue (found while restoring it)
        raise TrainSetupError(str(e).replace("\n", " ")) from e
    except SIGTERMException as e:  # Lightning stops on SIGTERM with a SystemExit of status 0: not a finished run
        last = Path(cfg.paths.checkpoint_dir) / "last.ckpt"
        raise TrainInterrupted(f"stopped by SIGTERM at step {trainer.global_step} of epoch {trainer.current_epoch}; "
                               f"resume with ckpt_path={last} (the last finished epoch)") from e
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.summary and trainer.is_global_zero:
        _print_summary(objects["module"], metrics)
    return metrics, objects


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns ``cfg.optimized_metric`` for Hydra sweepers."""
    with one_line_errors("enas4d-train", TrainSetupError):
        try:
            metrics, _ = train(cfg)
        except TrainInterrupted as e:
            print(f"enas4d-train: interrupted: {e}", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)  # the shell's status of a process ended by SIGTERM
    if cfg.optimized_metric is None:
        return None
    if cfg.optimized_metric not in metrics:
        raise KeyError(f"optimized_metric={cfg.optimized_metric!r} was not logged; logged: {sorted(metrics)}")
    return metrics[cfg.optimized_metric]


if __name__ == "__main__":
    main()
