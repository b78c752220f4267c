"""``enas4d-search``: find the subnet and exit thresholds of best validation accuracy for a budget.

    enas4d-search ckpt=outputs/demo/train/checkpoints/last.ckpt budget=0.5x
    enas4d-search ckpt=... budget=2.5ms device_profile=outputs/demo/profile/profile.json

The budget is average MACs per image, or average latency per image on the machine a device profile
(``enas4d-profile``) was measured on: then the per-stage costs the thresholds are calibrated with are
that profile's predicted latencies (integer nanoseconds) instead of MACs, each stage with a per-call
part that the images of a batch reaching it share (:mod:`enas4d.search.latency`), and nothing else
changes.

Everything is rebuilt from the checkpoint (supernet, weights, search space, and the datamodule
with the training run's split and normalisation), so the search runs on the validation split
the training held out and on nothing else. :func:`search` is the importable function; :func:`main`
is the thin Hydra entry point. Settings: conf/search.yaml, read once into a
:class:`~enas4d.search.config.SearchConfig`; the result: :class:`~enas4d.search.result.SearchResult`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from enas4d.checkpoint import CheckpointError, CheckpointMeta, build_datamodule, load_supernet
from enas4d.models import MultiStageSupernet
from enas4d.search.budget import Budget, BudgetError, format_macs, format_seconds
from enas4d.search.calibrate import (Policy, calibrate, cross_fit, exit_costs, forced_exit_costs, min_cost,
                                     pareto_indices, simulate, tradeoff)
from enas4d.search.config import NO_PROFILE, PredictorConfig, SearchConfig
from enas4d.search.evaluator import CandidateEvaluator, EvalCache, SearchError, file_digest, fingerprint_name
from enas4d.search.evolution import EvolutionConfig, Scored, best_first, run_search, scored_key
from enas4d.search.latency import NS_PER_SECOND, DeviceProfile, LatencyCosts, LatencyError
from enas4d.search.policy_gradient import ControllerConfig
from enas4d.search.predictor import AccuracyPredictor, holdout_kendall_tau
from enas4d.search.report import plot_pareto, print_summary, write_pareto_csv
from enas4d.search.result import (BNSettings, Calibration, CrossFitted, LatencyPrediction, PredictorReport,
                                  SearchResult, SearchRun, StaticBest)
from enas4d.utils.cli import CONF_DIR, one_line_errors
from enas4d.utils.device import resolve_device
from enas4d.space import InvalidSubnetError, SearchSpace, Subnet
from enas4d.nn.bn import CalibrationSet
from enas4d.utils import rebatch

__all__ = ["CONF_DIR", "DynamicProblem", "StaticProblem", "build_datamodule", "search", "main"]



# Per-stage costs of an architecture, (body, heads) in the budget's integer unit (MACs or nanoseconds).
StageCosts = Callable[[Subnet], tuple[list[int], list[int]]]


class DynamicProblem:
    """Early-exit subnets: fitness = accuracy of the best threshold policy within the budget."""

    def __init__(self, evaluator: CandidateEvaluator, budget: float, grid: int | None,
                 costs: StageCosts | None = None, calls: StageCosts | None = None):
        self.evaluator, self.budget, self.grid = evaluator, budget, grid
        self.costs = costs or evaluator.stage_macs  # the budget's unit: MACs unless told
        self.calls = calls  # per-call parts of a latency's costs (None: none, as for MACs)
        self.elastic = evaluator.net.space.elastic_exits
        self.policies: dict[str, Policy] = {}

    def feasible(self, arch: Subnet) -> bool:
        """Some policy fits: every image leaving at the first exit is within budget."""
        return min_cost(*self.costs(arch), None if self.calls is None else self.calls(arch)) <= self.budget

    def policy(self, arch: Subnet) -> Policy:
        """The calibrated policy of ``arch`` (from its cached validation pass)."""
        key = CandidateEvaluator.key(arch)
        if key not in self.policies:
            body, heads = self.costs(arch)
            pol = calibrate(self.evaluator.table(arch), body, heads, self.budget, self.elastic, self.grid,
                            None if self.calls is None else self.calls(arch))
            if pol is None:
                raise SearchError(f"search: no policy of {key} fits the budget although it was deemed feasible")
            self.policies[key] = pol
        return self.policies[key]

    def score(self, arch: Subnet) -> tuple[float, float]:
        """(accuracy, expected cost) of the calibrated policy."""
        pol = self.policy(arch)
        return pol.accuracy, pol.expected_macs


class StaticProblem:
    """Single-exit subnets (only the last exit): fitness = its accuracy, cost = its MACs."""

    def __init__(self, evaluator: CandidateEvaluator, budget: float, costs: StageCosts | None = None,
                 calls: StageCosts | None = None):
        self.evaluator, self.budget = evaluator, budget
        self.costs = costs or evaluator.stage_macs  # the budget's unit: MACs unless told
        self.calls = calls  # per-call parts of a latency's costs (None: none, as for MACs)

    def cost(self, arch: Subnet) -> int:
        """Cost per image (MACs, or the budget's unit) of ``arch`` with only its last exit."""
        body, heads = self.costs(arch)
        return forced_exit_costs(body, heads, (False,) * (len(body) - 1) + (True,),
                                 None if self.calls is None else self.calls(arch))[-1]

    def feasible(self, arch: Subnet) -> bool:
        """Its full cost is within budget."""
        return self.cost(arch) <= self.budget

    def score(self, arch: Subnet) -> tuple[float, float]:
        """(last-exit accuracy, MACs)."""
        return float(self.evaluator.table(arch).correct[-1].mean()), float(self.cost(arch))


def static_subnet(arch: Subnet) -> Subnet:
    """``arch`` with only its last exit enabled."""
    return _apply_exits(arch, (False,) * (arch.num_stages - 1) + (True,))


@dataclass
class _Progress:
    """A rich progress bar per search phase, showing candidates evaluated and the best so far."""

    progress: Progress | None
    fmt: Callable[[float], str] = lambda cost: f"{format_macs(cost)} MACs"  # a cost, readable
    task: Any = None

    def start(self, label: str, total: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(label, total=total, best="-")

    def update(self, best: Scored) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, best=f"{100 * best.fitness:.2f}% @ {self.fmt(best.cost)}")


def _best(scored: list[Scored]) -> Scored:
    """Highest fitness, then cheapest, then earliest."""
    return min(scored, key=scored_key)


def search(cfg: DictConfig | SearchConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Run the search described by ``cfg`` (conf/search.yaml, composed or read into a SearchConfig);
    write outputs to ``out_dir``.

    Returns the ``result.json`` content (:meth:`SearchResult.to_dict`). Bad input raises SearchError,
    BudgetError, LatencyError or CheckpointError (one-line messages) before anything is written.
    """
    config = cfg if isinstance(cfg, SearchConfig) else SearchConfig.from_cfg(cfg)
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _search(config, Path(out_dir), console or Console()).to_dict()
    finally:
        torch.set_num_threads(old_threads)


@dataclass
class _Setup:
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


def _prepare(cfg: SearchConfig, console: Console) -> _Setup:
    """Rebuild supernet and data from the checkpoint, resolve the budget, open the cache."""
    budget_spec = cfg.budget_spec
    device = resolve_device(cfg.device, SearchError)
    net, meta = load_supernet(cfg.ckpt)
    ckpt_sha = file_digest(cfg.ckpt)
    profile, latency = _open_profile(cfg, budget_spec, net, meta)
    net.to(device)  # the evaluator moves each batch to the network's device
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
    overrides = dict(cfg.data_overrides or {})
    dm = build_datamodule(meta, overrides)
    val_batches = list(rebatch(dm.val_dataloader(), cfg.eval_batch_size))
    if not val_batches:
        raise SearchError("data: the validation split is empty; the search needs validation images")
    calib = CalibrationSet(dm.calibration_dataloader(num_images=cfg.bn.images, batch_size=cfg.bn.batch_size))
    labels = np.concatenate([y.numpy() for _, y in val_batches]).astype(np.int64)
    # What the cached numbers depend on (loading-only settings and the data's location excluded).
    data_cfg = {k: v for k, v in sorted({**meta.data["cfg"], **overrides}.items())
                if k not in ("num_workers", "pin_memory", "batch_size", "eval_batch_size", "path")}
    fingerprint = {"checkpoint_sha256": ckpt_sha,
                   "data": {"name": meta.data["name"], "cfg": data_cfg},
                   "bn_images": calib.num_images, "bn_batch_size": cfg.bn.batch_size,
                   "confidence": cfg.confidence, "num_val_images": int(len(labels)),
                   "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}
    cache_path = Path(cfg.cache_dir) / f"{Path(cfg.ckpt).stem}-{fingerprint_name(fingerprint)}.jsonl"
    cache = EvalCache(cache_path, fingerprint, labels)
    if costs is None:
        console.print(f"search: {net.name} ({space.num_stages} exits) from {cfg.ckpt}; budget {format_macs(budget)} "
                      f"MACs/image (largest subnet {format_macs(largest_macs)}, smallest "
                      f"{format_macs(smallest_macs)}); {len(labels)} validation images on {device}; cache "
                      f"{cache_path} ({len(cache)} architectures)")
    else:
        console.print(f"search: {net.name} ({space.num_stages} exits) from {cfg.ckpt}; budget "
                      f"{format_seconds(budget_spec.value)}/image predicted by {profile.path} at batch "
                      f"{latency.batch_size} (largest subnet {format_seconds(largest_cost / NS_PER_SECOND)}, "
                      f"smallest {format_seconds(smallest_cost / NS_PER_SECOND)}); {len(labels)} validation images "
                      f"on {device}; cache {cache_path} ({len(cache)} architectures)")
    if latency is not None and latency.fit.note:
        console.print(f"search: note: {latency.fit.note}")
    evaluator = CandidateEvaluator(net, calib, val_batches, cfg.confidence, cache)
    if file_digest(cfg.ckpt) != ckpt_sha:  # rewritten while it was read (a training still running)
        raise SearchError(f"ckpt: {cfg.ckpt!r} changed while the search read it; search again once it is written")
    return _Setup(net, meta, budget, largest_macs, smallest_macs, evaluator, cache_path, ckpt_sha, budget_spec.unit,
                  costs, largest_cost, smallest_cost, profile, latency)


def _run_searches(cfg: SearchConfig, st: _Setup, dyn: DynamicProblem, sta: StaticProblem,
                  console: Console) -> tuple[list[Scored], list[Scored]]:
    """The dynamic search, then the static one (or only the largest subnet if the budget allows all)."""
    space = st.net.space
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), console=console,
                    disable=not cfg.progress)
    bar = _Progress(prog, st.label)
    with prog:
        if st.budget >= st.largest_cost:
            console.print(f"search: budget {st.fmt(st.budget)} is at or above the largest subnet's cost "
                          f"{st.fmt(st.largest_cost)}; every subnet fits, returning the largest subnet")
            bar.start("largest", 1)
            largest = space.largest()
            s = Scored(largest, *dyn.score(largest), step=0)
            bar.update(s)
            return [s], [Scored(largest, *sta.score(largest), step=0)]
        rank = _make_rank(dyn, cfg.predictor, cfg.seed) if cfg.predictor.enabled else None
        dynamic = _tracked_search(space, dyn, cfg.evolution(cfg.evaluations), "dynamic", bar, console, rank,
                                  cfg.predictor.screen_factor, cfg.controller)
        if not dynamic:  # only policy_gradient can end empty: it samples instead of shrinking until it fits
            raise SearchError(f"search: {cfg.algorithm} drew no architecture that fits {st.label(st.budget)}/image "
                              f"in {cfg.max_tries} samples; raise max_tries or the budget, or use "
                              "algorithm=evolution (it shrinks candidates until they fit)")
        static: list[Scored] = []
        if cfg.static_evaluations > 0:
            if not sta.feasible(space.smallest()):
                console.print(f"search: no static (single-exit) subnet fits {st.fmt(st.budget)}; the "
                              f"smallest costs {st.fmt(sta.cost(space.smallest()))}")
            else:
                # Its own random stream: it explores independently (shared evaluations come free).
                scfg = cfg.evolution(cfg.static_evaluations, stream=1)
                static = _tracked_search(space, sta, scfg, "static", bar, console, None, 1, cfg.controller)
    return dynamic, static


def _tracked_search(space: SearchSpace, problem: DynamicProblem | StaticProblem, ecfg: EvolutionConfig, label: str,
                    bar: _Progress, console: Console, rank: Any, screen_factor: int,
                    controller: ControllerConfig) -> list[Scored]:
    """:func:`run_search` with a progress bar showing the best so far."""
    bar.start(f"{label} ({ecfg.algorithm})", ecfg.evaluations)
    best: list[Scored] = []

    def on_scored(s: Scored) -> None:
        best[:] = [_best(best + [s])]
        bar.update(best[0])

    return run_search(space, problem, ecfg, on_scored=on_scored, rank=rank, screen_factor=screen_factor,
                      log=console.print, controller=controller)


def _fronts(cfg: SearchConfig, st: _Setup, dyn_all: list[tuple[Subnet, Policy]],
            static_pts: list[tuple[Subnet, float, float]]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Pareto rows (for pareto.csv) and the dynamic and static fronts (for the plot).

    Dynamic: every architecture's policy trade-off curve plus its exact policy at the budget.
    Static: every architecture with only its last exit.
    """
    dyn_rows: list[tuple[float, float, Subnet]] = []
    for a, pol in dyn_all:
        body, heads = st.stage_costs(a)
        curve, curve_exits = tradeoff(st.evaluator.table(a), body, heads, st.net.space.elastic_exits,
                                      cfg.front_levels, st.stage_calls(a))
        dyn_rows += [(float(m), float(acc), _apply_exits(a, e)) for (m, acc), e in zip(curve, curve_exits)]
        dyn_rows.append((pol.expected_macs, pol.accuracy, _apply_exits(a, pol.exits)))
    sta_rows = [(macs, acc, static_subnet(a)) for a, acc, macs in static_pts]
    rows, fronts = [], []
    key = "expected_latency" if st.unit == "seconds" else "expected_macs"  # seconds or MACs per image
    for kind, pts in (("dynamic", dyn_rows), ("static", sta_rows)):
        idx = pareto_indices(np.array([[m, acc] for m, acc, _ in pts]).reshape(-1, 2))
        rows += [{"kind": kind, key: st.to_unit(pts[i][0]), "val_accuracy": pts[i][1], "subnet": pts[i][2].to_json()}
                 for i in idx]
        fronts.append(np.array([[st.to_unit(pts[i][0]), pts[i][1]] for i in idx]).reshape(-1, 2))
    return rows, fronts[0], fronts[1]


def _search(cfg: SearchConfig, out_dir: Path, console: Console) -> SearchResult:
    """:func:`search` with the thread count already set."""
    start = time.perf_counter()
    st = _prepare(cfg, console)
    net, space, budget, evaluator = st.net, st.net.space, st.budget, st.evaluator
    grid = cfg.calibration_grid
    dyn = DynamicProblem(evaluator, budget, grid, st.costs, st.calls)
    sta = StaticProblem(evaluator, budget, st.costs, st.calls)
    dynamic_scored, static_scored = _run_searches(cfg, st, dyn, sta, console)

    # Every architecture scored in this run counts for both kinds (its pass gives both numbers).
    archs = list({CandidateEvaluator.key(s.arch): s.arch for s in dynamic_scored + static_scored}.values())
    dyn_all = [(a, dyn.policy(a)) for a in archs if dyn.feasible(a)]
    best_arch, policy = min(dyn_all, key=lambda ap: best_first(ap[1].correct, ap[1].total_macs))
    static_pts = [(a, *sta.score(a)) for a in archs]
    static_fit = [p for p in static_pts if p[2] <= budget]
    static_best, static_fit_cost = None, 0.0
    if static_fit:
        a, acc, cost = min(static_fit, key=lambda p: best_first(p[1], p[2]))
        macs = exit_costs(*evaluator.stage_macs(a), static_subnet(a).exits)[-1]
        static_best = StaticBest(subnet=space.to_dict(static_subnet(a)), val_accuracy=acc, macs=int(macs),
                                 latency=None if st.latency is None else st.latency.exit_seconds(static_subnet(a))[-1])
        static_fit_cost = float(cost)
    front_rows, dyn_front, sta_front = _fronts(cfg, st, dyn_all, static_pts)

    report = None
    if cfg.predictor.holdout > 0:
        pc = cfg.predictor
        rep = holdout_kendall_tau(space, [a for a, _ in dyn_all], [p.accuracy for _, p in dyn_all],
                                  pc.holdout, cfg.seed, pc.hidden, pc.epochs, pc.lr)
        if rep is not None:
            report = PredictorReport(kendall_tau=rep.kendall_tau, n_train=rep.n_train, n_test=rep.n_test,
                                     used_for_screening=pc.enabled)

    body, heads = st.stage_costs(best_arch)
    held = cross_fit(evaluator.table(best_arch), body, heads, budget, space.elastic_exits, grid, cfg.seed,
                     st.stage_calls(best_arch))
    chosen = _apply_exits(best_arch, policy.exits)
    # The policy's MACs (and, with a profile, its predicted latency) whatever the budget's unit.
    in_macs = simulate(evaluator.table(best_arch), policy.exits, policy.thresholds, *evaluator.stage_macs(best_arch))
    latency = None
    if st.latency is not None:
        in_ns = simulate(evaluator.table(best_arch), policy.exits, policy.thresholds, *st.latency(best_arch),
                         st.latency.calls(best_arch))
        latency = LatencyPrediction(
            device_profile=st.profile.path, device_profile_sha256=st.profile.sha256,
            batch_size=st.latency.batch_size,
            expected=in_ns.expected_macs / NS_PER_SECOND,  # predicted average seconds per image
            # predicted cumulative, per enabled exit, every image of the batch leaving there
            exit_latency=st.latency.exit_seconds(chosen),
            # its per-call part (stage calls / batch size), paid once per batch up to the deepest exit taken
            exit_call_latency=st.latency.exit_call_seconds(chosen),
            call_fit=st.latency.fit.to_dict(),  # batch sizes of the per-call fit; note if a fallback
            budget=st.to_unit(budget) if st.unit == "seconds" else None,
            largest=st.latency.exit_seconds(space.largest())[-1],
            fit=st.profile.data["fit"].get(str(st.latency.batch_size)),
            **{k: st.profile.data[k] for k in ("machine", "torch", "threads", "clock", "runtime")})
    enabled = [k for k, on in enumerate(policy.exits) if on]
    result = SearchResult(
        subnet=space.to_dict(chosen),
        thresholds=[policy.thresholds[k] for k in enabled],  # one per enabled exit, the last 0.0
        exit_stages=enabled,  # 0-based stage of each enabled exit
        confidence=cfg.confidence,
        val_accuracy=policy.accuracy,
        expected_macs=in_macs.expected_macs,
        budget=st.to_unit(budget),  # in budget_unit
        budget_unit=st.unit,  # "macs" (per image) or "seconds" (per image, predicted by latency.device_profile)
        expected_latency=None if latency is None else latency.expected,  # seconds per image, predicted
        exit_rates=[policy.exit_rates[k] for k in enabled],
        exit_macs=[in_macs.exit_macs[k] for k in enabled],  # cumulative, = net.macs(subnet)
        checkpoint=str(Path(cfg.ckpt).resolve()),
        checkpoint_sha256=st.checkpoint_sha256,  # export refuses other weights at the same path
        static_best=static_best,
        # The chosen architecture's thresholds fitted on one half of the validation images and
        # scored on the other (both ways): val_accuracy without the optimism of fitting on it.
        cross_fitted=None if held is None else CrossFitted(
            val_accuracy=held[0], **{("expected_latency" if st.unit == "seconds" else "expected_macs"):
                                     st.to_unit(held[1])}),
        num_val_images=evaluator.labels.size,
        largest_macs=int(st.largest_macs),
        smallest_macs=int(st.smallest_macs),
        calibration=Calibration(exact=policy.gap_bound == 0.0, gap_bound=policy.gap_bound),
        # BatchNorm re-estimation the scores depend on; export repeats it to get the same network.
        bn=BNSettings(images=cfg.bn.images, batch_size=cfg.bn.batch_size),
        search=SearchRun(algorithm=cfg.algorithm, evaluations=len(dynamic_scored),
                         static_evaluations=len(static_scored), distinct_architectures=len(archs), seed=cfg.seed,
                         budget_above_largest=budget >= st.largest_macs, network_evaluations=evaluator.misses,
                         cache_hits=evaluator.hits, cache=str(st.cache_path),
                         network_seconds=round(evaluator.network_seconds, 2), device=str(next(net.parameters()).device),
                         controller=(dataclasses.asdict(cfg.controller) if cfg.algorithm == "policy_gradient"
                                     else None),
                         seconds=round(time.perf_counter() - start, 2)),
        predictor=report,
        latency=latency,
    )
    write_pareto_csv(out_dir / "pareto.csv", front_rows)
    plot_pareto(out_dir / "pareto.png", dyn_front, sta_front,
                np.array([[st.to_unit(p.expected_macs), p.accuracy] for _, p in dyn_all]), st.to_unit(budget),
                (st.to_unit(policy.expected_macs), policy.accuracy),
                None if static_best is None else (st.to_unit(static_fit_cost), static_best.val_accuracy),
                f"{net.name}, {st.meta.data['name']}: {len(archs)} architectures", unit=st.unit)
    result.write(out_dir / "result.json")  # last: its presence means the run completed
    print_summary(result, front_rows, console)
    console.print(f"search: wrote {out_dir / 'result.json'}, pareto.csv, pareto.png in "
                  f"{result.search.seconds:.0f}s ({evaluator.misses} network evaluations, "
                  f"{evaluator.hits} from cache)")
    return result


def _apply_exits(arch: Subnet, exits: tuple[bool, ...]) -> Subnet:
    """``arch`` with the policy's exit set."""
    return dataclasses.replace(arch, exits=tuple(exits))


def _make_rank(dyn: DynamicProblem, pcfg: PredictorConfig, seed: int):
    """Predictor-based ranking of children: fitted on every cached architecture (scored at this budget)."""
    space = dyn.evaluator.net.space
    parsed: dict[str, Subnet] = {}  # cache key -> architecture, parsed once across generations

    def rank(archs: list[Subnet]) -> np.ndarray:
        train = []
        for key in dyn.evaluator.cached_keys():
            if key not in parsed:
                parsed[key] = space.from_dict(json.loads(key))
            a = parsed[key]
            if dyn.feasible(a):
                train.append((a, dyn.score(a)[0]))
        if len(train) < pcfg.min_train:
            return np.zeros(len(archs))  # too little data: keep the proposal order
        model = AccuracyPredictor(space, pcfg.hidden, pcfg.epochs, pcfg.lr, seed)
        model.fit([a for a, _ in train], [f for _, f in train])
        return model.predict(archs)

    return rank


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="search")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the chosen subnet's validation accuracy (for sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    with one_line_errors("enas4d-search", SearchError, BudgetError, CheckpointError, InvalidSubnetError, LatencyError):
        result = search(cfg, HydraConfig.get().runtime.output_dir)
    return result["val_accuracy"]


if __name__ == "__main__":
    main()
