"""What a search builds before it searches (:func:`prepare`): the supernet and its data rebuilt from the
checkpoint, the budget resolved in its cost unit (MACs, or nanoseconds predicted by a device profile),
and the evaluator with its cache of validation passes."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from enas4d.checkpoint import CheckpointMeta, build_datamodule, load_supernet
from enas4d.models import MultiStageSupernet
from enas4d.nn.bn import BNEstimationSet
from enas4d.search.budget import Budget, BudgetError, format_macs, format_seconds
from enas4d.search.calibrate import forced_exit_costs, min_cost
from enas4d.search.config import NO_PROFILE, SearchConfig
from enas4d.search.evaluator import CandidateEvaluator, EvalCache, SearchError, file_digest, fingerprint_name
from enas4d.search.latency import NS_PER_SECOND, DeviceProfile, LatencyCosts, LatencyError
from enas4d.search.problems import StageCosts
from enas4d.space import Subnet
from enas4d.utils import rebatch
from enas4d.utils.device import resolve_device


@dataclass
class Setup:
    """Everything a search run builds before it searches."""

    net: MultiStageSupernet  # on the search's device
    meta: CheckpointMeta
    budget: float  # per image, in the cost unit: MACs, or nanoseconds for a latency budget
    largest_macs: int  # largest subnet, all exits computed, every image to the last
    smallest_macs: int  # smallest subnet, every image leaving at the first exit
    evaluator: CandidateEvaluator
    cache_path: Path
    checkpoint_sha256: str  # of the bytes the supernet was loaded from (result.json; export checks it)
    unit: str = "macs"  # of the budget: "macs" or "seconds" (costs are then integer nanoseconds)
    costs: StageCosts | None = None  # per-stage costs in the cost unit (None: evaluator.stage_macs)
    largest_cost: float = 0.0  # largest_macs in the cost unit
    smallest_cost: float = 0.0  # smallest_macs in the cost unit
    profile: DeviceProfile | None = None  # device_profile=, when given
    latency: LatencyCosts | None = None  # its predicted per-stage latencies at latency_batch_size

    def stage_costs(self, arch: Subnet) -> tuple[list[int], list[int]]:
        """Per-stage (body, heads) costs of ``arch`` in the cost unit."""
        return (self.costs or self.evaluator.stage_macs)(arch)

    @property
    def calls(self) -> StageCosts | None:
        """Per-stage per-call (body, heads) costs of a latency budget (None for MACs)."""
        return self.latency.calls if self.costs is not None and self.latency is not None else None

    def stage_calls(self, arch: Subnet) -> tuple[list[int], list[int]] | None:
        """Per-stage per-call (body, heads) costs of ``arch`` in the cost unit, per image (None for MACs)."""
        return None if self.calls is None else self.calls(arch)

    def to_unit(self, cost: float) -> float:
        """A cost in the budget's unit: MACs, or seconds per image (from nanoseconds)."""
        return cost / NS_PER_SECOND if self.unit == "seconds" else cost

    def fmt(self, cost: float) -> str:
        """A cost, readable: ``2.5M`` (MACs) or ``2.5ms``."""
        return format_seconds(self.to_unit(cost)) if self.unit == "seconds" else format_macs(cost)

    def label(self, cost: float) -> str:
        """A cost with its unit: ``2.5M MACs`` or ``2.5ms``."""
        return self.fmt(cost) if self.unit == "seconds" else f"{format_macs(cost)} MACs"



@dataclass
class _Bounds:
    """The budget and the cheapest and dearest subnets, in MACs and in the cost unit."""

    budget: float  # per image, in the cost unit
    largest_macs: int
    smallest_macs: int
    costs: LatencyCosts | None  # a latency budget's per-stage costs (None: MACs)
    largest_cost: float
    smallest_cost: float


@dataclass
class _Data:
    """The validation split (in evaluation batches), the BN estimation images and the labels."""

    val_batches: list[Any]
    bn_set: BNEstimationSet
    labels: np.ndarray
    overrides: dict[str, Any]  # data_overrides= applied to the checkpoint's datamodule


def prepare(cfg: SearchConfig, console: Console) -> Setup:
    """Rebuild supernet and data from the checkpoint, resolve the budget, open the cache."""
    budget_spec = cfg.budget_spec
    device = resolve_device(cfg.device, SearchError)
    net, meta = load_supernet(cfg.ckpt)
    ckpt_sha = file_digest(cfg.ckpt)
    profile, latency = _open_profile(cfg, budget_spec, net, meta)
    net.to(device)  # the evaluator moves each batch to the network's device
    b = _resolve_budget(net, budget_spec, latency)
    data = _load_data(cfg, meta)
    cache_path, cache = _open_cache(cfg, meta, ckpt_sha, data)
    _announce(cfg, net, budget_spec, b, latency, f"{len(data.labels)} validation images on {device}; cache "
              f"{cache_path} ({len(cache)} architectures)", console)
    evaluator = CandidateEvaluator(net, data.bn_set, data.val_batches, cfg.confidence, cache)
    if file_digest(cfg.ckpt) != ckpt_sha:  # rewritten while it was read (a training still running)
        raise SearchError(f"ckpt: {cfg.ckpt!r} changed while the search read it; search again once it is written")
    return Setup(net, meta, b.budget, b.largest_macs, b.smallest_macs, evaluator, cache_path, ckpt_sha,
                 budget_spec.unit, b.costs, b.largest_cost, b.smallest_cost, profile, latency)


def _open_profile(cfg: SearchConfig, spec: Budget, net: MultiStageSupernet, meta: CheckpointMeta
                  ) -> tuple[DeviceProfile | None, LatencyCosts | None]:
    """The device profile of ``device_profile=`` and its latency predictor (None, None without one).

    A latency budget needs one; it must be a profile of this checkpoint's supernet and hold
    ``latency_batch_size`` (null: its own batch size). LatencyError names the field otherwise.
    """
    if cfg.device_profile is None:
        if spec.latency:
            raise LatencyError(NO_PROFILE.format(budget=cfg.budget))
        return None, None
    profile = DeviceProfile.load(cfg.device_profile)
    profile.check_supernet(meta.supernet, meta.space)
    on_cpu = next(net.parameters()).device.type == "cpu"  # features are read on the CPU
    return profile, LatencyCosts(net if on_cpu else copy.deepcopy(net).cpu(), profile, cfg.latency_batch_size)



def _resolve_budget(net: MultiStageSupernet, budget_spec: Budget, latency: LatencyCosts | None) -> _Bounds:
    """The budget per image in the cost unit; BudgetError when even the smallest subnet exceeds it."""
    space = net.space
    largest_macs = net.macs(space.largest())[-1]
    smallest_macs = min_cost(*net.stage_macs(space.smallest()))
    budget = budget_spec.resolve(largest_macs)
    costs = latency if budget_spec.latency else None
    largest_cost, smallest_cost = float(largest_macs), float(smallest_macs)
    if costs is not None:
        budget = budget_spec.value * NS_PER_SECOND
        largest = space.largest()
        largest_cost = float(forced_exit_costs(*costs(largest), largest.exits, costs.calls(largest))[-1])
        smallest_cost = float(min_cost(*costs(space.smallest()), costs.calls(space.smallest())))
        if budget < smallest_cost:
            raise BudgetError(f"budget: {format_seconds(budget_spec.value)}/image is below the smallest predicted "
                              f"latency {format_seconds(smallest_cost / NS_PER_SECOND)} (the smallest subnet, every "
                              f"image leaving at exit 1, on the profiled machine at batch "
                              f"{latency.batch_size}); use budget >= "
                              f"{format_seconds(smallest_cost / NS_PER_SECOND)}")
    if budget < smallest_macs and costs is None:
        raise BudgetError(f"budget: {format_macs(budget)} MACs/image is below the smallest achievable "
                          f"{smallest_macs} ({format_macs(smallest_macs)}: the smallest subnet, every image "
                          f"leaving at exit 1); use budget >= {smallest_macs}")
    return _Bounds(budget, largest_macs, smallest_macs, costs, largest_cost, smallest_cost)


def _load_data(cfg: SearchConfig, meta: CheckpointMeta) -> _Data:
    """The checkpoint's datamodule (with data_overrides=): its validation split and BN estimation images."""
    overrides = dict(cfg.data_overrides or {})
    dm = build_datamodule(meta, overrides)
    val_batches = list(rebatch(dm.val_dataloader(), cfg.eval_batch_size))
    if not val_batches:
        raise SearchError("data: the validation split is empty; the search needs validation images")
    bn_set = BNEstimationSet(dm.bn_dataloader(num_images=cfg.bn.images, batch_size=cfg.bn.batch_size))
    labels = np.concatenate([y.numpy() for _, y in val_batches]).astype(np.int64)
    return _Data(val_batches, bn_set, labels, overrides)


def _open_cache(cfg: SearchConfig, meta: CheckpointMeta, ckpt_sha: str, data: _Data) -> tuple[Path, EvalCache]:
    """The cache of validation passes for this checkpoint, data, BatchNorm settings and confidence."""
    # What the cached numbers depend on (loading-only settings and the data's location excluded).
    data_cfg = {k: v for k, v in sorted({**meta.data["cfg"], **data.overrides}.items())
                if k not in ("num_workers", "pin_memory", "batch_size", "eval_batch_size", "path")}
    fingerprint = {"checkpoint_sha256": ckpt_sha,
                   "data": {"name": meta.data["name"], "cfg": data_cfg},
                   "bn_images": data.bn_set.num_images, "bn_batch_size": cfg.bn.batch_size,
                   "confidence": cfg.confidence, "num_val_images": int(len(data.labels)),
                   "labels_sha256": hashlib.sha256(data.labels.tobytes()).hexdigest()}
    cache_path = Path(cfg.cache_dir) / f"{Path(cfg.ckpt).stem}-{fingerprint_name(fingerprint)}.jsonl"
    return cache_path, EvalCache(cache_path, fingerprint, data.labels)


def _announce(cfg: SearchConfig, net: MultiStageSupernet, budget_spec: Budget, b: _Bounds,
              latency: LatencyCosts | None, tail: str, console: Console) -> None:
    """The search's first line: supernet, budget, its bounds, the data and the cache (``tail``)."""
    head = f"search: {net.name} ({net.space.num_stages} exits) from {cfg.ckpt}; budget "
    if b.costs is None:
        console.print(f"{head}{format_macs(b.budget)} MACs/image (largest subnet {format_macs(b.largest_macs)}, "
                      f"smallest {format_macs(b.smallest_macs)}); {tail}")
    else:
        console.print(f"{head}{format_seconds(budget_spec.value)}/image predicted by {latency.profile.path} at batch "
                      f"{latency.batch_size} (largest subnet {format_seconds(b.largest_cost / NS_PER_SECOND)}, "
                      f"smallest {format_seconds(b.smallest_cost / NS_PER_SECOND)}); {tail}")
    if latency is not None and latency.fit.note:
        console.print(f"search: note: {latency.fit.note}")
