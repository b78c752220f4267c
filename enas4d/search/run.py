"""The search below the command line (:func:`run_and_write`): prepare (:mod:`enas4d.search.setup`), search
the dynamic and the static problem, assemble the :class:`~enas4d.search.result.SearchResult` and write
``result.json``, ``pareto.csv`` and ``pareto.png``."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from enas4d.search.budget import format_macs
from enas4d.search.calibrate import Policy, cross_fit, exit_costs, pareto_indices, simulate, tradeoff
from enas4d.search.config import PredictorConfig, SearchConfig
from enas4d.search.evaluator import CandidateEvaluator, SearchError
from enas4d.search.evolution import EvolutionConfig, Scored, best_first, run_search, scored_key
from enas4d.search.latency import NS_PER_SECOND
from enas4d.search.policy_gradient import ControllerConfig
from enas4d.search.predictor import AccuracyPredictor, holdout_kendall_tau
from enas4d.search.problems import DynamicProblem, StaticProblem, apply_exits, static_subnet
from enas4d.search.report import plot_pareto, print_summary, write_pareto_csv
from enas4d.search.result import (BNSettings, Calibration, CrossFitted, LatencyPrediction, PredictorReport,
                                  SearchResult, SearchRun, StaticBest)
from enas4d.search.setup import Setup, prepare
from enas4d.space import SearchSpace, Subnet


def run_and_write(cfg: SearchConfig, out_dir: Path, console: Console) -> SearchResult:
    """Prepare, search, then write the outputs to ``out_dir``; the thread count already set."""
    start = time.perf_counter()
    st = prepare(cfg, console)
    dyn = DynamicProblem(st.evaluator, st.budget, cfg.calibration_grid, st.costs, st.calls)
    sta = StaticProblem(st.evaluator, st.budget, st.costs, st.calls)
    dynamic_scored, static_scored = _run_searches(cfg, st, dyn, sta, console)
    found = _collect(st, dyn, sta, dynamic_scored, static_scored)
    front_rows, dyn_front, sta_front = _fronts(cfg, st, found.dyn_all, found.static_pts)
    result = _assemble(cfg, st, found, start)
    write_pareto_csv(out_dir / "pareto.csv", front_rows)
    plot_pareto(out_dir / "pareto.png", dyn_front, sta_front,
                np.array([[st.to_unit(p.expected_macs), p.accuracy] for _, p in found.dyn_all]), st.to_unit(st.budget),
                (st.to_unit(found.policy.expected_macs), found.policy.accuracy),
                None if found.static_best is None else (st.to_unit(found.static_fit_cost),
                                                        found.static_best.val_accuracy),
                f"{st.net.name}, {st.meta.data['name']}: {len(found.archs)} architectures", unit=st.unit)
    result.write(out_dir / "result.json")  # last: its presence means the run completed
    print_summary(result, front_rows, console)
    console.print(f"search: wrote {out_dir / 'result.json'}, pareto.csv, pareto.png in "
                  f"{result.search.seconds:.0f}s ({st.evaluator.misses} network evaluations, "
                  f"{st.evaluator.hits} from cache)")
    return result


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


class _BestSoFar:
    """``on_scored`` of :func:`run_search`: keeps the best scored architecture and shows it on the bar."""

    def __init__(self, bar: _Progress):
        self.bar, self.best = bar, None

    def __call__(self, s: Scored) -> None:
        self.best = s if self.best is None else _best([self.best, s])
        self.bar.update(self.best)


class PredictorRank:
    """Predictor-based ranking of children: fitted on every cached architecture (scored at this budget)."""

    def __init__(self, dyn: DynamicProblem, pcfg: PredictorConfig, seed: int):
        self.dyn, self.pcfg, self.seed = dyn, pcfg, seed
        self.space = dyn.evaluator.net.space
        self.parsed: dict[str, Subnet] = {}  # cache key -> architecture, parsed once across generations

    def __call__(self, archs: list[Subnet]) -> np.ndarray:
        train = []
        for key in self.dyn.evaluator.cached_keys():
            if key not in self.parsed:
                self.parsed[key] = self.space.from_dict(json.loads(key))
            a = self.parsed[key]
            if self.dyn.feasible(a):
                train.append((a, self.dyn.score(a)[0]))
        if len(train) < self.pcfg.min_train:
            return np.zeros(len(archs))  # too little data: keep the proposal order
        model = AccuracyPredictor(self.space, self.pcfg.hidden, self.pcfg.epochs, self.pcfg.lr, self.seed)
        model.fit([a for a, _ in train], [f for _, f in train])
        return model.predict(archs)


def _run_searches(cfg: SearchConfig, st: Setup, dyn: DynamicProblem, sta: StaticProblem,
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
        rank = PredictorRank(dyn, cfg.predictor, cfg.seed) if cfg.predictor.enabled else None
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
    return run_search(space, problem, ecfg, on_scored=_BestSoFar(bar), rank=rank, screen_factor=screen_factor,
                      log=console.print, controller=controller)


@dataclass
class _Found:
    """What the searches found: every architecture scored, the chosen one and the best static one."""

    archs: list[Subnet]  # distinct, in order of first evaluation
    dyn_all: list[tuple[Subnet, Policy]]  # the feasible ones with their calibrated policy
    best_arch: Subnet
    policy: Policy
    static_pts: list[tuple[Subnet, float, float]]  # (architecture, last-exit accuracy, cost)
    static_best: StaticBest | None
    static_fit_cost: float  # its cost in the cost unit (0.0 without one)
    evaluations: int  # of the dynamic search
    static_evaluations: int


def _collect(st: Setup, dyn: DynamicProblem, sta: StaticProblem, dynamic_scored: list[Scored],
             static_scored: list[Scored]) -> _Found:
    """The best policy over every scored architecture, and the best static subnet within the budget."""
    # Every architecture scored in this run counts for both kinds (its pass gives both numbers).
    archs = list({CandidateEvaluator.key(s.arch): s.arch for s in dynamic_scored + static_scored}.values())
    dyn_all = [(a, dyn.policy(a)) for a in archs if dyn.feasible(a)]
    best_arch, policy = min(dyn_all, key=lambda ap: best_first(ap[1].correct, ap[1].total_macs))
    static_pts = [(a, *sta.score(a)) for a in archs]
    static_fit = [p for p in static_pts if p[2] <= st.budget]
    static_best, static_fit_cost = None, 0.0
    if static_fit:
        a, acc, cost = min(static_fit, key=lambda p: best_first(p[1], p[2]))
        macs = exit_costs(*st.evaluator.stage_macs(a), static_subnet(a).exits)[-1]
        static_best = StaticBest(subnet=st.net.space.to_dict(static_subnet(a)), val_accuracy=acc, macs=int(macs),
                                 latency=None if st.latency is None else st.latency.exit_seconds(static_subnet(a))[-1])
        static_fit_cost = float(cost)
    return _Found(archs, dyn_all, best_arch, policy, static_pts, static_best, static_fit_cost,
                  len(dynamic_scored), len(static_scored))


def _fronts(cfg: SearchConfig, st: Setup, dyn_all: list[tuple[Subnet, Policy]],
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
        dyn_rows += [(float(m), float(acc), apply_exits(a, e)) for (m, acc), e in zip(curve, curve_exits)]
        dyn_rows.append((pol.expected_macs, pol.accuracy, apply_exits(a, pol.exits)))
    sta_rows = [(macs, acc, static_subnet(a)) for a, acc, macs in static_pts]
    rows, fronts = [], []
    key = "expected_latency" if st.unit == "seconds" else "expected_macs"  # seconds or MACs per image
    for kind, pts in (("dynamic", dyn_rows), ("static", sta_rows)):
        idx = pareto_indices(np.array([[m, acc] for m, acc, _ in pts]).reshape(-1, 2))
        rows += [{"kind": kind, key: st.to_unit(pts[i][0]), "val_accuracy": pts[i][1], "subnet": pts[i][2].to_json()}
                 for i in idx]
        fronts.append(np.array([[st.to_unit(pts[i][0]), pts[i][1]] for i in idx]).reshape(-1, 2))
    return rows, fronts[0], fronts[1]


def _predictor_report(cfg: SearchConfig, space: SearchSpace, dyn_all: list[tuple[Subnet, Policy]]
                      ) -> PredictorReport | None:
    """The accuracy predictor's Kendall tau on held-out architectures (None when not asked for or too few)."""
    if cfg.predictor.holdout <= 0:
        return None
    pc = cfg.predictor
    rep = holdout_kendall_tau(space, [a for a, _ in dyn_all], [p.accuracy for _, p in dyn_all],
                              pc.holdout, cfg.seed, pc.hidden, pc.epochs, pc.lr)
    if rep is None:
        return None
    return PredictorReport(kendall_tau=rep.kendall_tau, n_train=rep.n_train, n_test=rep.n_test,
                           used_for_screening=pc.enabled)


def _cross_fitted(cfg: SearchConfig, st: Setup, arch: Subnet) -> CrossFitted | None:
    """The chosen architecture's thresholds fitted on one half of the validation images and scored on the
    other (both ways): val_accuracy without the optimism of fitting on it."""
    body, heads = st.stage_costs(arch)
    held = cross_fit(st.evaluator.table(arch), body, heads, st.budget, st.net.space.elastic_exits,
                     cfg.calibration_grid, cfg.seed, st.stage_calls(arch))
    if held is None:
        return None
    return CrossFitted(val_accuracy=held[0], **{("expected_latency" if st.unit == "seconds" else "expected_macs"):
                                                st.to_unit(held[1])})


def _latency_prediction(st: Setup, found: _Found, chosen: Subnet) -> LatencyPrediction | None:
    """The chosen policy's latency predicted by the device profile (None without one)."""
    if st.latency is None:
        return None
    best_arch, policy = found.best_arch, found.policy
    in_ns = simulate(st.evaluator.table(best_arch), policy.exits, policy.thresholds, *st.latency(best_arch),
                     st.latency.calls(best_arch))
    return LatencyPrediction(
        device_profile=st.profile.path, device_profile_sha256=st.profile.sha256,
        batch_size=st.latency.batch_size,
        expected=in_ns.expected_macs / NS_PER_SECOND,  # predicted average seconds per image
        # predicted cumulative, per enabled exit, every image of the batch leaving there
        exit_latency=st.latency.exit_seconds(chosen),
        # its per-call part (stage calls / batch size), paid once per batch up to the deepest exit taken
        exit_call_latency=st.latency.exit_call_seconds(chosen),
        call_fit=st.latency.fit.to_dict(),  # batch sizes of the per-call fit; note if a fallback
        budget=st.to_unit(st.budget) if st.unit == "seconds" else None,
        largest=st.latency.exit_seconds(st.net.space.largest())[-1],
        fit=st.profile.data["fit"].get(str(st.latency.batch_size)),
        **{k: st.profile.data[k] for k in ("machine", "torch", "threads", "clock", "runtime")})


def _policy_fields(cfg: SearchConfig, st: Setup, found: _Found, chosen: Subnet,
                   latency: LatencyPrediction | None) -> dict[str, Any]:
    """The result's fields about the chosen subnet and its policy."""
    best_arch, policy = found.best_arch, found.policy
    # The policy's MACs (and, with a profile, its predicted latency) whatever the budget's unit.
    in_macs = simulate(st.evaluator.table(best_arch), policy.exits, policy.thresholds,
                       *st.evaluator.stage_macs(best_arch))
    enabled = [k for k, on in enumerate(policy.exits) if on]
    return dict(
        subnet=st.net.space.to_dict(chosen),
        thresholds=[policy.thresholds[k] for k in enabled],  # one per enabled exit, the last 0.0
        exit_stages=enabled,  # 0-based stage of each enabled exit
        confidence=cfg.confidence,
        val_accuracy=policy.accuracy,
        expected_macs=in_macs.expected_macs,
        budget=st.to_unit(st.budget),  # in budget_unit
        budget_unit=st.unit,  # "macs" (per image) or "seconds" (per image, predicted by latency.device_profile)
        expected_latency=None if latency is None else latency.expected,  # seconds per image, predicted
        exit_rates=[policy.exit_rates[k] for k in enabled],
        exit_macs=[in_macs.exit_macs[k] for k in enabled],  # cumulative, = net.macs(subnet)
    )


def _search_run(cfg: SearchConfig, st: Setup, found: _Found, start: float) -> SearchRun:
    """How the search ran: algorithm, evaluations, cache, device and time."""
    ev = st.evaluator
    return SearchRun(algorithm=cfg.algorithm, evaluations=found.evaluations,
                     static_evaluations=found.static_evaluations, distinct_architectures=len(found.archs),
                     seed=cfg.seed, budget_above_largest=st.budget >= st.largest_macs, network_evaluations=ev.misses,
                     cache_hits=ev.hits, cache=str(st.cache_path), network_seconds=round(ev.network_seconds, 2),
                     device=str(next(st.net.parameters()).device),
                     controller=(dataclasses.asdict(cfg.controller) if cfg.algorithm == "policy_gradient" else None),
                     seconds=round(time.perf_counter() - start, 2))


def _assemble(cfg: SearchConfig, st: Setup, found: _Found, start: float) -> SearchResult:
    """The :class:`SearchResult` of the run."""
    report = _predictor_report(cfg, st.net.space, found.dyn_all)
    cross_fitted = _cross_fitted(cfg, st, found.best_arch)
    chosen = apply_exits(found.best_arch, found.policy.exits)
    latency = _latency_prediction(st, found, chosen)
    return SearchResult(
        **_policy_fields(cfg, st, found, chosen, latency),
        checkpoint=str(Path(cfg.ckpt).resolve()),
        checkpoint_sha256=st.checkpoint_sha256,  # export refuses other weights at the same path
        static_best=found.static_best,
        cross_fitted=cross_fitted,
        num_val_images=st.evaluator.labels.size,
        largest_macs=int(st.largest_macs),
        smallest_macs=int(st.smallest_macs),
        calibration=Calibration(exact=found.policy.gap_bound == 0.0, gap_bound=found.policy.gap_bound),
        # BatchNorm re-estimation the scores depend on; export repeats it to get the same network.
        bn=BNSettings(images=cfg.bn.images, batch_size=cfg.bn.batch_size),
        search=_search_run(cfg, st, found, start),
        predictor=report,
        latency=latency,
    )
