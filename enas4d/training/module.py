"""The LightningModule that trains a multi-stage supernet with the sandwich rule.

One optimizer step per batch (manual optimisation):

1. the :class:`~enas4d.training.sampling.SandwichSampler` gives the step's subnets (largest,
   smallest, ``n_random`` random ones; every exit enabled), a pure function of ``(seed, step)``;
2. each subnet runs forward; the largest learns from the labels (label smoothing), the others
   from the labels plus in-place distillation from the largest's last exit (detached);
3. **one** ``manual_backward`` of the summed loss, then one optimizer and scheduler step.

Why one backward of the sum, not one backward per subnet: under DDP, Lightning runs the whole
``training_step`` as one ``DistributedDataParallel.forward``, and DDP all-reduces each gradient
bucket when autograd finishes that parameter's gradient in the backward that follows. A single
backward therefore all-reduces every bucket exactly once per step (tests/training/test_ddp.py counts
it), whereas a backward per subnet would all-reduce once per subnet (or fail DDP's "marked ready
only once" check). The cost is memory: the graphs of all sampled subnets are alive together, about
``2 + n_random`` times a single subnet's activations.

Validation evaluates the smallest, a middle and the largest subnet, each after BatchNorm
re-estimation on the datamodule's fixed BN estimation subset (the largest's statistics stay loaded,
recorded as ``net.bn_subnet``, so a checkpoint says whose they are), and logs every exit's accuracy as
``val/{min,mid,max}/exit{k}``; ``val/acc`` is the mean last-exit accuracy of the three (of the distinct
ones: a one-architecture space, a static network, validates only ``max``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.classification import MulticlassAccuracy

from enas4d.checkpoint import CheckpointError, make_meta
from enas4d.models.supernet import MultiStageSupernet
from enas4d.space import SearchSpace, Subnet
from enas4d.nn.bn import BNEstimationSet, bn_buffers, load_bn_buffers
from enas4d.training.losses import multi_exit_loss
from enas4d.training.optim import param_groups, schedule_length
from enas4d.training.sampling import SandwichSampler, middle_subnet

__all__ = ["SupernetModule", "check_meta_compatible"]

SAMPLER_CKPT_KEY = "enas4d_sampler"  # checkpoint entry holding SandwichSampler.state_dict()


def check_meta_compatible(meta: dict[str, Any], net: MultiStageSupernet, num_data_classes: int,
                          source: str) -> None:
    """Raise CheckpointError if the ``ckpt["enas4d"]`` entry ``meta`` does not fit ``net``.

    Args:
        meta: the checkpoint's enas4d entry (see :mod:`enas4d.checkpoint`).
        net: the supernet this run built.
        num_data_classes: classes of this run's dataset.
        source: where the meta comes from, for the message (a path).
    """
    sn = meta["supernet"]
    ours = {"name": net.name, "num_classes": net.num_classes, "num_stages": net.num_stages, "in_chans": net.in_chans}
    diff = [f"{k}={sn.get(k)!r} (this run: {v!r})" for k, v in ours.items() if sn.get(k) != v]
    if diff:
        raise CheckpointError(f"ckpt: {source} holds another supernet: {', '.join(diff)}")
    if SearchSpace.from_config(meta["space"]) != net.space:
        raise CheckpointError(f"ckpt: {source} was trained on another search space than supernet {net.name!r} "
                              "has in this version of enas4d")
    ckpt_classes = len(meta["data"]["class_names"])
    if ckpt_classes != num_data_classes:
        raise CheckpointError(f"ckpt: {source} was trained on {ckpt_classes} classes "
                              f"({meta['data']['name']!r}); this run's data has {num_data_classes}")


def _distinct(subnets: dict[str, Subnet]) -> dict[str, Subnet]:
    """``subnets`` without entries equal to a later one ("max" is kept: a one-architecture space
    validates once, as ``max``)."""
    names = list(subnets)
    return {n: s for i, (n, s) in enumerate(subnets.items()) if s not in [subnets[m] for m in names[i + 1:]]}


class SupernetModule(pl.LightningModule):
    """Sandwich-rule training of a multi-stage supernet, with per-exit validation of fixed subnets.

    Args:
        net: the supernet (kept as ``self.net``, so checkpoint keys are ``net.*``).
        optimizer: ``optimizer(param_groups) -> Optimizer`` (a Hydra ``_partial_`` node).
        scheduler: ``scheduler(optimizer, total_steps=...) -> LRScheduler`` or None; stepped every step.
        data_meta: the ``data`` part of the checkpoint meta (name, cfg, mean, std, class_names, image_size).
        n_random: random subnets per step besides the largest and the smallest.
        exit_weights: one loss weight per exit (normalised to sum 1), or None for equal weights.
        label_smoothing: label smoothing of every cross-entropy, in [0, 1).
        kd_weight: weight of in-place distillation from the largest's last exit (0 disables it).
        kd_temperature: softmax temperature of the distillation.
        weight_decay: L2 weight decay of conv/linear weights (never of BatchNorm parameters or biases).
        shrinking: progressive-shrinking phases ``[{"start": fraction, "elastic": [dims]}]`` or None.
        grad_clip_norm: clip the global gradient norm to this value, or None.
        teacher: ``"auto"``: distil every exit of every subnet from ``teacher_net`` when one is given
            (the static source on the from_static path), else in-place from the largest subnet;
            ``"none"``: in-place distillation only.
        teacher_net: a frozen network whose last output is the teacher's logits (kept in eval mode).
        frozen: parameter name (in ``net``) -> bool mask of entries that every optimizer step leaves
            as they were at the first step (a grown S2DNAS supernet's static stage), or None.
        train_stages: the stages every training forward runs (None: all K); the loss covers their exits.
            A fine-tuning that keeps the last stage frozen (a grown S2DNAS supernet) runs K - 1: the
            frozen stage would cost most of the step and train nothing.
        bn_images: images of the fixed BN estimation subset (training split) used before every evaluation.
        bn_batch_size: batch size of BN re-estimation (None: the datamodule's eval batch size).
        seed: base seed of subnet sampling.
    """

    def __init__(self, net: MultiStageSupernet, optimizer: Callable[..., Optimizer],
                 scheduler: Callable[..., LRScheduler] | None, data_meta: dict[str, Any], n_random: int = 2,
                 exit_weights: Sequence[float] | None = None, label_smoothing: float = 0.1,
                 kd_weight: float = 1.0, kd_temperature: float = 1.0, weight_decay: float = 5e-5,
                 shrinking: Sequence[dict[str, Any]] | None = None, grad_clip_norm: float | None = None,
                 teacher: str = "auto", teacher_net: torch.nn.Module | None = None, bn_images: int = 2000, bn_batch_size: int | None = None, seed: int = 0,
                 frozen: dict[str, Tensor] | None = None, train_stages: int | None = None):
        super().__init__()
        K = net.num_stages
        weights = [1.0] * K if exit_weights is None else [float(w) for w in exit_weights]
        if len(weights) != K or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"module.exit_weights={list(weights)} not allowed; allowed: {K} non-negative "
                             "numbers (one per exit) with a positive sum, or null")
        if train_stages is not None and not (1 <= train_stages <= K and sum(weights[:train_stages]) > 0):
            raise ValueError(f"train_stages={train_stages} not allowed; allowed: 1..{K} stages whose exit weights "
                             "have a positive sum, or null")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"module.label_smoothing={label_smoothing} not allowed; allowed: [0, 1)")
        if kd_weight < 0 or kd_temperature <= 0:
            raise ValueError(f"module.kd_weight={kd_weight}, module.kd_temperature={kd_temperature}: "
                             "allowed kd_weight >= 0 and kd_temperature > 0")
        if bn_images < 1:
            raise ValueError(f"module.bn_images={bn_images} not allowed; allowed: >= 1")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"module.grad_clip_norm={grad_clip_norm} not allowed; allowed: > 0 or null")
        if teacher not in ("auto", "none"):
            raise ValueError(f"module.teacher={teacher!r} not allowed; allowed: 'auto', 'none'")
        self.automatic_optimization = False
        self.net = net
        # A submodule, so Lightning moves it with the model; its weights are frozen and it runs in eval mode.
        self.teacher_net = teacher_net if teacher == "auto" else None
        if self.teacher_net is not None:
            self.teacher_net.requires_grad_(False)
        params = dict(net.named_parameters())
        unknown = sorted(set(frozen or {}) - set(params))
        if unknown:
            raise ValueError(f"frozen: {unknown[0]!r} is not a parameter of the network")
        self.frozen = dict(frozen or {})
        self._frozen_values: list[tuple[Tensor, Tensor, Tensor]] | None = None  # taken at the first step
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.data_meta = dict(data_meta)
        self.exit_weights = weights
        self.train_stages = train_stages
        self.label_smoothing, self.kd_weight, self.kd_temperature = label_smoothing, kd_weight, kd_temperature
        self.weight_decay, self.grad_clip_norm = weight_decay, grad_clip_norm
        self.bn_images, self.bn_batch_size = bn_images, bn_batch_size
        self.sampler = SandwichSampler(net.space, n_random, seed, shrinking)
        space = net.space
        self.val_subnets = _distinct({"min": space.smallest(), "mid": middle_subnet(space), "max": space.largest()})
        self.val_acc = torch.nn.ModuleDict({
            f"{name}_exit{k + 1}": MulticlassAccuracy(net.num_classes, average="micro")
            for name in self.val_subnets for k in range(K)})
        self._bn_set: BNEstimationSet | None = None
        self._val_bn: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self.last_step: dict[str, Any] | None = None  # what the last training step did (for callbacks)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "teacher_net"])

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits of every enabled exit of the active subnet, each (N, classes)."""
        return self.net(x)

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """SGD (or the configured optimizer) over decay/no-decay groups; schedule stepped per step."""
        opt = self.optimizer_factory(param_groups(self.net, self.weight_decay))
        if self.scheduler_factory is None:
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("trainer: set trainer.max_epochs or trainer.max_steps (the schedule needs a finite length)")
        sch = self.scheduler_factory(opt, total_steps=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}

    def _progress(self) -> float:
        """Fraction of all optimizer steps done (drives progressive shrinking)."""
        total = self.trainer.estimated_stepping_batches
        return min(1.0, self.global_step / total) if math.isfinite(total) and total > 0 else 0.0

    def sandwich_loss(self, x: Tensor, y: Tensor, subnets: Sequence[Subnet]) -> tuple[Tensor, list[Tensor]]:
        """Summed loss of ``subnets`` on ``x`` (N, C, H, W), ``y`` (N,); the teacher is ``teacher_net``
        or else the first subnet (in-place distillation).

        Returns the differentiable total and each subnet's loss (detached). Leaves the last
        subnet active.
        """
        total = torch.zeros((), device=x.device)
        teacher: Tensor | None = None
        if self.teacher_net is not None and self.kd_weight > 0:
            with torch.no_grad():
                teacher = self.teacher_net.eval()(x)[-1]  # (N, classes); eval(): Lightning's train() reaches it
        losses: list[Tensor] = []
        weights = self.exit_weights[:self.train_stages]
        for i, s in enumerate(subnets):
            self.net.set_subnet(s, self.train_stages)
            logits = self.net(x)  # the model resizes x to s.resolution
            loss, _ = multi_exit_loss(logits, y, weights, self.label_smoothing, teacher=teacher,
                                      kd_weight=self.kd_weight, temperature=self.kd_temperature)
            if i == 0 and self.kd_weight > 0 and self.teacher_net is None:
                teacher = logits[-1].detach()  # (N, classes): the largest subnet's last exit
            total = total + loss
            losses.append(loss.detach())
        return total, losses

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One sandwich-rule step on batch ``(x (N, C, H, W), y (N,))``; returns the summed loss."""
        x, y = batch
        step = self.global_step  # optimizer steps done so far: the key of this step's subnets
        subnets = self.sampler.sample(step, self._progress())
        total, losses = self.sandwich_loss(x, y, subnets)
        opt = self.optimizers()
        self._record_frozen()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)  # the step's only backward: one all-reduce per bucket under DDP
        if self.grad_clip_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self._restore_frozen()
        self.net.set_bn_subnet(None)  # the weights moved: the BatchNorm statistics are nobody's now
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()
        total = total.detach()
        logs = {"train/loss": total, "train/loss_largest": losses[0]}
        if len(losses) > 1:
            logs["train/loss_smallest"] = losses[1]
        if len(losses) > 2:
            logs["train/loss_random"] = torch.stack(losses[2:]).mean()
        # on_step only: epoch-level aggregation under DDP would add a collective per logged value.
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False)
        self.log("loss", total, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        # Tensors and Subnets as they are: converting here (float() syncs the device) would cost
        # every step, whether or not a callback reads them.
        self.last_step = {"step": step, "epoch": self.current_epoch, "batch_idx": batch_idx,
                          "subnets": subnets, "loss": total.detach(),
                          "losses": [v.detach() for v in losses]}
        return total

    @torch.no_grad()
    def _restore_frozen(self) -> None:
        """Put the frozen entries back (the optimizer's update, weight decay and momentum included)."""
        if not self.frozen:
            return
        for p, mask, values in self._frozen_values:
            p[mask] = values

    @torch.no_grad()
    def _record_frozen(self) -> None:
        """Record the frozen entries' values, once, before the first optimizer step (on a resume the
        checkpoint's weights are loaded by then: the frozen entries never changed)."""
        if self.frozen and self._frozen_values is None:
            params = dict(self.net.named_parameters())
            self._frozen_values = []  # (parameter, mask on its device, frozen values): looked up once
            for name, mask in self.frozen.items():
                p = params[name]
                mask = mask.to(p.device)
                self._frozen_values.append((p, mask, p[mask].clone()))

    def _attached_trainer(self) -> "pl.Trainer | None":
        """The Trainer this module is attached to, or None (the public ``trainer`` raises without one;
        Lightning's private ``_trainer`` is not read)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    # -------------------------------------------------------------- validation
    def bn_set(self) -> BNEstimationSet:
        """The fixed BN estimation subset of the training split, loaded once and cached."""
        if self._bn_set is None:
            trainer = self._attached_trainer()
            dm = trainer.datamodule if trainer is not None else None
            if dm is None or not hasattr(dm, "bn_dataloader"):
                raise RuntimeError("SupernetModule needs a datamodule with bn_dataloader() "
                                   "(pass datamodule= to Trainer.fit)")
            self._bn_set = BNEstimationSet(dm.bn_dataloader(self.bn_images, self.bn_batch_size))
        return self._bn_set

    def on_validation_epoch_start(self) -> None:
        """Re-estimate and keep the BatchNorm statistics of each validated subnet."""
        bn_set = self.bn_set()
        self._val_bn = {}
        for name, s in self.val_subnets.items():
            bn_set.reestimate(self.net, s)
            self._val_bn[name] = bn_buffers(self.net)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate every exit's accuracy of the min/mid/max subnets on one batch."""
        x, y = batch
        for name, s in self.val_subnets.items():
            load_bn_buffers(self.net, self._val_bn[name])
            self.net.set_subnet(s)
            for k, logits in enumerate(self.net(x)):
                self.val_acc[f"{name}_exit{k + 1}"].update(logits, y)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/{min,mid,max}/exit{k}`` and ``val/acc`` (mean last-exit accuracy of the three)."""
        K = self.net.num_stages
        values: dict[str, Tensor] = {}
        for name in self.val_subnets:
            for k in range(K):
                metric = self.val_acc[f"{name}_exit{k + 1}"]
                values[f"val/{name}/exit{k + 1}"] = metric.compute()  # synchronised across DDP ranks
                metric.reset()
        values["val/acc"] = torch.stack([values[f"val/{n}/exit{K}"] for n in self.val_subnets]).mean()
        # The values are already global; sync_dist only silences Lightning's DDP warning.
        self.log_dict(values, sync_dist=True)
        self._val_bn = {}

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the enas4d meta (format version, supernet, space, data) and the sampler settings."""
        checkpoint["enas4d"] = make_meta(self.net, self.data_meta)
        checkpoint[SAMPLER_CKPT_KEY] = self.sampler.state_dict()

    def _check_schedule_length(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a fit whose learning-rate schedule would last another number of steps.

        The restored schedule keeps the checkpoint's length: with a larger trainer.max_epochs the
        extra steps would run at its final learning rate (0 by default) and train nothing.
        """
        states = checkpoint.get("lr_schedulers") or []
        saved = schedule_length(states[0]) if states else None
        trainer = self._attached_trainer()
        if saved is None or trainer is None or trainer.state.fn != "fit":
            return
        total = trainer.estimated_stepping_batches
        if math.isfinite(total) and int(total) != saved:
            raise CheckpointError(
                f"trainer.max_epochs/max_steps: this run would last {int(total)} optimizer steps, the checkpoint's "
                f"learning-rate schedule lasts {saved} and a resumed run continues it; resume with the run's own "
                "trainer.max_epochs, trainer.max_steps, trainer.limit_train_batches and data.batch_size, or start a "
                "new run to train longer")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another supernet/space/classes before its weights are loaded."""
        meta = checkpoint.get("enas4d")
        if not isinstance(meta, dict):
            raise CheckpointError("ckpt: not an enas4d checkpoint (no 'enas4d' entry)")
        check_meta_compatible(meta, self.net, len(self.data_meta["class_names"]), "the checkpoint")
        self._check_schedule_length(checkpoint)
        saved = checkpoint.get(SAMPLER_CKPT_KEY)
        if saved != self.sampler.state_dict():
            rank_zero_warn(f"resuming with other sampling settings ({self.sampler.state_dict()}) than the "
                           f"checkpoint's ({saved}): the subnets drawn will differ from the original run")
