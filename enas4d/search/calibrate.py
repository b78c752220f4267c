"""Exit-threshold calibration from one cached validation pass (design.md section 6, inner loop).

A candidate architecture is run once over the validation split with every exit enabled; what is
kept per exit ``k`` and image ``i`` is whether exit ``k`` is right and how confident it is
(:class:`ExitTable`). A *policy* enables a subset of exits (the last always) and gives each enabled
exit ``k`` but the last a threshold ``t_k``: image ``i`` leaves at the first enabled exit with
``conf[k, i] >= t_k``. Its cost per image is the cumulative MACs ``C_k`` of that exit, counting only
enabled heads (design.md section 3); its expected MACs are the mean over images.

The cost is a parameter: every function here takes per-stage ``body`` and ``heads`` costs as
integers in any additive unit, MACs by default, or a device profile's predicted nanoseconds per
image for a latency budget (:mod:`enas4d.search.latency`); fields named ``*_macs`` then hold that unit.
A latency also has a per-call part (``calls``: per-stage body and head costs paid once per batch
that reaches the stage, given per image of the batch, i.e. divided by its size): a stage that no
image reaches is skipped and costs nothing, so a policy pays the per-call parts of the stages up to
the deepest exit any image takes, once per image (:func:`expected_cost`, the one rule).

:func:`calibrate` finds the policy of highest validation accuracy whose expected MACs are within a
budget (ties: the cheaper one), touching only the table, never the network.

What is exact and what is a bound (``m`` = number of enabled exits before the last):

- Any threshold is equivalent to one at a distinct confidence value of its exit (or to disabling
  the exit, which the enumeration of exit subsets covers: a "never exit here" threshold keeps
  the head's MACs and is therefore never better than the subset without that exit).
- ``m <= 2`` (every subset of a K <= 3 supernet): **exact**. For ``m = 1`` a sweep over the
  distinct confidences of the exit; for ``m = 2`` the counts and accuracy gains of all
  ``D1 x D2`` threshold pairs come from one 2-D cumulative sum of a (level1, level2) histogram,
  built block by block, so it is ``O(N + D1 * D2)`` time and ``O(block * D2)`` memory.
- ``m >= 3``: the first ``m - 2`` thresholds range over a fixed grid of confidence quantiles
  (exact when an exit has no more distinct values than the grid), the last two are exact as
  above. Rounding each gridded threshold of an optimal policy *down* to the grid only makes images
  leave earlier, so the cost does not grow (the rounded policy stays feasible), and only images
  whose confidence lies inside one grid bin change exit. Hence the returned accuracy is at least
  ``optimum - sum_j maxbin_j / N``, which :attr:`Policy.gap_bound` reports (0.0 when exact).

Confidences are scaled so that higher means more confident and all lie in [0, 1]; the last
exit's threshold is 0.0 (always accepts). A reported threshold sits half-way between the chosen
confidence value and the next lower one, so float noise of a re-implementation (the exported
model) does not flip images at the boundary.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np
from torch import Tensor

from enas4d.export.early_exit import CONFIDENCES, Confidence
from enas4d.models.spec import exit_costs

__all__ = ["CONFIDENCES", "ExitTable", "Policy", "Calls", "confidence", "exit_costs", "forced_exit_costs",
           "expected_cost", "simulate", "calibrate", "cross_fit", "tradeoff", "pareto_front", "pareto_indices",
           "exit_subsets", "min_cost"]

# Per-call costs of the stages, (body, heads) per image of the batch (see the module docstring).
Calls = Tuple[Sequence[int], Sequence[int]]


# Cap on the number of grid combinations enumerated for m >= 3 (the grid per exit shrinks to fit).
_MAX_COMBOS = 256
# Elements of one (block x D2) slab of the 2-D sweep: bounds its memory to a few tens of MB.
_BLOCK_ELEMS = 1 << 21


def confidence(logits: Tensor, measure: str) -> tuple[Tensor, Tensor]:
    """Predicted class (N,) int64 and confidence (N,) float32 in [0, 1] of logits (N, C).

    The confidence is the exported model's own :class:`~enas4d.export.early_exit.Confidence` (one
    definition), so the search scores exactly the decisions the export takes.
    """
    logits = logits.detach()
    return logits.argmax(-1), Confidence(measure, logits.shape[-1])(logits)


@dataclass(frozen=True)
class ExitTable:
    """One candidate's validation pass: correctness and confidence of every exit on every image."""

    correct: np.ndarray  # (K, N) bool: exit k classifies image i correctly
    conf: np.ndarray  # (K, N) float32 in [0, 1]: exit k's confidence on image i

    def __post_init__(self) -> None:
        if self.correct.shape != self.conf.shape or self.correct.ndim != 2:
            raise ValueError(f"ExitTable: correct {self.correct.shape} and conf {self.conf.shape} "
                             "must both be (K, N)")

    @property
    def num_stages(self) -> int:
        """K, the number of exits recorded."""
        return self.correct.shape[0]

    @property
    def num_images(self) -> int:
        """N, the number of validation images."""
        return self.correct.shape[1]


@dataclass(frozen=True)
class Policy:
    """Enabled exits, their thresholds, and what that policy scores on the table it came from."""

    exits: tuple[bool, ...]  # (K,) enabled exits; the last is always True
    thresholds: tuple[float | None, ...]  # (K,) leave at k iff conf >= t_k; None: disabled; last 0.0
    correct: int  # validation images classified correctly
    total_macs: int  # MACs summed over the validation images
    counts: tuple[int, ...]  # (K,) images leaving at each exit (0 where disabled)
    num_images: int  # N
    exit_macs: tuple[int, ...]  # (K,) cumulative MACs of leaving at each exit (0 where disabled; per-call parts in)
    gap_bound: float = 0.0  # proven bound on (optimal accuracy - accuracy); 0.0: exact

    @property
    def accuracy(self) -> float:
        """Validation accuracy in [0, 1]."""
        return self.correct / self.num_images

    @property
    def expected_macs(self) -> float:
        """Average MACs per image."""
        return self.total_macs / self.num_images

    @property
    def exit_rates(self) -> list[float]:
        """Fraction of images leaving at each exit (K values)."""
        return [c / self.num_images for c in self.counts]


def exit_subsets(num_stages: int, elastic_exits: bool) -> list[tuple[bool, ...]]:
    """Exit sets the policy may use: all subsets containing the last, or only all exits."""
    if not elastic_exits:
        return [(True,) * num_stages]
    return [tuple(bits) + (True,) for bits in itertools.product((False, True), repeat=num_stages - 1)]


def min_cost(body: Sequence[int], heads: Sequence[int], calls: Calls | None = None) -> int:
    """Cheapest expected MACs of an architecture: every image leaves at the first exit."""
    return int(body[0]) + int(heads[0]) + (0 if calls is None else int(calls[0][0]) + int(calls[1][0]))


def _call_costs(calls: Calls | None, exits: Sequence[bool]) -> list[int]:
    """Cumulative per-call cost of each stage's exit (0 where disabled, or all 0 without ``calls``)."""
    return [0] * len(exits) if calls is None else exit_costs(calls[0], calls[1], exits)


def forced_exit_costs(body: Sequence[int], heads: Sequence[int], exits: Sequence[bool],
                      calls: Calls | None = None) -> list[int]:
    """Cumulative cost per image of leaving at each stage when every image of the batch leaves there
    (what enas4d-profile times for a latency): per-image and per-call parts; 0 at disabled stages."""
    return [c + f for c, f in zip(exit_costs(body, heads, exits), _call_costs(calls, exits))]


def expected_cost(weights: Sequence[float], exit_cost: Sequence[float],
                  exit_call: Sequence[float] | None = None) -> float:
    """Cost of an early-exit policy: the one rule (calibration, search result, export, enas4d-evaluate).

    ``weights[k]``: images leaving at exit ``k`` (counts: the total over them) or the fraction of
    them (exit rates: the average per image); ``exit_cost[k]``: the per-image part of the cumulative
    cost of leaving at ``k`` (:func:`exit_costs` of per-image costs); ``exit_call[k]``: its per-call
    part, per image of the batch (None: none, as for MACs). Each image pays the per-image part of
    its exit; the stages up to the deepest exit that any image takes run once per batch, so their
    per-call parts are paid once, shared by all images; the stages after it never run. For a batch
    of ``B`` images with per-stage costs ``a_k + b_k * n`` (``n`` images reaching stage ``k``) this is
    ``(1/B) * sum_k [a_k * (reach_k > 0) + b_k * B * reach_k]`` per image, ``reach_k`` the fraction of
    images still undecided when stage ``k`` starts.
    """
    total = sum(w * c for w, c in zip(weights, exit_cost))
    used = [k for k, w in enumerate(weights) if w > 0]
    if exit_call is not None and used:
        total += sum(weights) * exit_call[used[-1]]
    return total


def simulate(table: ExitTable, exits: Sequence[bool], thresholds: Sequence[float | None],
             body: Sequence[int], heads: Sequence[int], calls: Calls | None = None) -> Policy:
    """Score a given policy on the table by direct simulation (the reference the search is tested on)."""
    K, N = table.correct.shape
    if len(exits) != K or len(thresholds) != K or not exits[-1]:
        raise ValueError(f"simulate: need {K} exits (last True) and {K} thresholds")
    costs = exit_costs(body, heads, exits)
    undecided = np.ones(N, dtype=bool)
    correct, counts = 0, [0] * K
    for k in range(K):
        if not exits[k]:
            continue
        t = thresholds[k]
        if k < K - 1 and t is None:
            raise ValueError(f"simulate: enabled exit {k} needs a threshold")
        # float64: numpy would round a Python-float threshold to float32 against a float32 array.
        leave = undecided if k == K - 1 else undecided & (table.conf[k].astype(np.float64) >= t)
        n = int(leave.sum())
        counts[k] = n
        correct += int(table.correct[k][leave].sum())
        undecided &= ~leave
    ths = tuple(None if not on else (0.0 if k == K - 1 else float(t))
                for k, (on, t) in enumerate(zip(exits, thresholds)))
    call = _call_costs(calls, exits)
    total = int(expected_cost(counts, costs, call))
    return Policy(tuple(bool(e) for e in exits), ths, correct, total, tuple(counts), N,
                  tuple(c + f for c, f in zip(costs, call)))


# ------------------------------------------------------------------------------------ internals
def _levels(conf: np.ndarray, grid: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Threshold levels of one exit, descending, and each image's level: the first level <= its conf.

    Levels are all distinct values (``grid`` None or not fewer distinct values) or ``grid``
    quantiles of ``conf`` always including its max and min, so every image has a level.
    """
    uniq = np.unique(conf)  # ascending
    if grid is not None and len(uniq) > grid:
        s = np.sort(conf)
        uniq = np.unique(s[np.round(np.linspace(0, len(s) - 1, grid)).astype(np.int64)])
    lev = len(uniq) - np.searchsorted(uniq, conf, side="right")  # (n,) in [0, Q-1]
    return uniq[::-1].copy(), lev.astype(np.int64)


class _Consumer:
    """Receives blocks of enumerated policies: (correct, total MACs) arrays and a decoder."""

    def offer(self, correct: np.ndarray, cost: np.ndarray,
              decode: Callable[[int], dict[int, float]]) -> None:
        raise NotImplementedError

    def can_skip(self, max_correct: int, min_cost: int) -> bool:
        """May a block whose policies score at most ``max_correct`` and cost at least ``min_cost`` be
        skipped without changing the result?"""
        return False


class _Best(_Consumer):
    """Keeps the feasible policy with most correct images, then fewest MACs (first one on ties)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.correct, self.cost = -1, 0
        self.levels: dict[int, float] | None = None

    def offer(self, correct: np.ndarray, cost: np.ndarray,
              decode: Callable[[int], dict[int, float]]) -> None:
        correct, cost = correct.ravel(), cost.ravel()
        feasible = cost <= self.limit
        if not feasible.any():
            return
        best = int(np.where(feasible, correct, -1).max())
        if best < self.correct:
            return
        cand = feasible & (correct == best)
        i = int(np.argmin(np.where(cand, cost, np.iinfo(np.int64).max)))
        if best > self.correct or int(cost[i]) < self.cost:
            self.correct, self.cost, self.levels = best, int(cost[i]), decode(i)

    def can_skip(self, max_correct: int, min_cost: int) -> bool:
        """Nothing feasible, or nothing that could beat (or tie) the best so far."""
        return min_cost > self.limit or max_correct < self.correct


class _Front(_Consumer):
    """Collects the Pareto-optimal (total MACs, correct) pairs of everything offered."""

    def __init__(self) -> None:
        self.points: list[np.ndarray] = []

    def offer(self, correct: np.ndarray, cost: np.ndarray,
              decode: Callable[[int], dict[int, float]]) -> None:
        pts = np.stack([cost.ravel().astype(np.float64), correct.ravel().astype(np.float64)], 1)
        self.points.append(pareto_front(pts))


class _Enumerator:
    """Enumerates threshold policies of one exit subset of one table (see module docstring)."""

    def __init__(self, table: ExitTable, costs: list[int], ks: list[int], grid: int | None,
                 last_grid: int | None, calls: list[int] | None = None):
        self.corr = table.correct.astype(np.int64)  # (K, N) 0/1
        self.conf = table.conf
        self.C = np.asarray(costs, dtype=np.int64)  # (K,) cumulative MACs of each stage for this subset
        # (K,) cumulative per-call cost of each exit, per image, times N: paid once for the deepest
        # exit any image takes (expected_cost); all 0 for MACs.
        self.NF = table.num_images * np.asarray([0] * len(costs) if calls is None else calls, dtype=np.int64)
        self.L = table.num_stages - 1
        self.ks = ks  # enabled stages before the last, ascending
        self.last_grid = last_grid  # levels of the last two swept exits (None: exact)
        m = len(ks)
        self.grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.gap = 0  # images: sum of the gridded exits' largest bins
        if m >= 3:
            # Grid per exit, shrunk so that at most _MAX_COMBOS combinations are enumerated.
            q = None if grid is None else max(2, min(grid, int(_MAX_COMBOS ** (1.0 / (m - 2)) + 1e-9)))
            for k in ks[:m - 2]:
                vals, lev = _levels(self.conf[k], q)
                self.grids[k] = (vals, lev)
                if len(vals) < len(np.unique(self.conf[k])):
                    # Largest bin strictly below the top level (see the module docstring's argument).
                    self.gap += int(np.bincount(lev, minlength=len(vals))[1:].max(initial=0))

    def run(self, consumer: _Consumer) -> None:
        """Offer every policy of the subset to ``consumer``."""
        idx = np.arange(self.conf.shape[1])
        self._chain(idx, list(self.ks), {}, 0, 0, consumer, -1)

    def _chain(self, idx: np.ndarray, ks: list[int], fixed: dict[int, float], base_correct: int,
               base_cost: int, consumer: _Consumer, deepest: int) -> None:
        """``deepest``: the deepest exit an image left at so far (-1: none)."""
        L, C = self.L, self.C
        if len(idx) == 0 or not ks:
            # Everyone left already (thresholds of the rest are irrelevant) or a static subnet.
            rest = {k: float(self.conf[k].max()) for k in ks}
            correct = base_correct + int(self.corr[L, idx].sum())
            cost = base_cost + len(idx) * int(C[L]) + int(self.NF[L if len(idx) else deepest])
            consumer.offer(np.array([correct]), np.array([cost]), lambda i: {**fixed, **rest})
        elif len(ks) == 1:
            self._sweep1(idx, ks[0], fixed, base_correct, base_cost, consumer)
        elif len(ks) == 2:
            self._sweep2(idx, ks[0], ks[1], fixed, base_correct, base_cost, consumer)
        else:
            k = ks[0]
            vals, lev_all = self.grids[k]
            lev = lev_all[idx]
            for q in range(len(vals)):
                leave = lev <= q
                out = idx[leave]
                self._chain(idx[~leave], ks[1:], {**fixed, k: float(vals[q])},
                            base_correct + int(self.corr[k, out].sum()), base_cost + len(out) * int(C[k]),
                            consumer, k if len(out) else deepest)

    def _sweep1(self, idx: np.ndarray, k: int, fixed: dict[int, float], base_correct: int, base_cost: int,
                consumer: _Consumer) -> None:
        L, C, n = self.L, self.C, len(idx)
        vals, lev = _levels(self.conf[k, idx], self.last_grid)
        Q = len(vals)
        w = self.corr[k, idx] - self.corr[L, idx]  # (n,) accuracy gain of leaving at k instead of L
        cnt = np.cumsum(np.bincount(lev, minlength=Q))  # (Q,) images leaving at k with level q
        gain = np.rint(np.cumsum(np.bincount(lev, weights=w, minlength=Q))).astype(np.int64)
        correct = base_correct + int(self.corr[L, idx].sum()) + gain
        # n >= 1 images reach exit k: the deepest taken is L unless all of them leave at k.
        cost = base_cost + cnt * C[k] + (n - cnt) * C[L] + np.where(cnt < n, self.NF[L], self.NF[k])
        consumer.offer(correct, cost, lambda i: {**fixed, k: float(vals[i])})

    def _sweep2(self, idx: np.ndarray, k1: int, k2: int, fixed: dict[int, float], base_correct: int,
                base_cost: int, consumer: _Consumer) -> None:
        L, C, n = self.L, self.C, len(idx)
        v1, lev1 = _levels(self.conf[k1, idx], self.last_grid)
        v2, lev2 = _levels(self.conf[k2, idx], self.last_grid)
        Q1, Q2 = len(v1), len(v2)
        cL = self.corr[L, idx]
        w1 = self.corr[k1, idx] - cL  # gain of leaving at k1 instead of L
        w2 = self.corr[k2, idx] - cL  # gain of leaving at k2 instead of L
        cnt1 = np.cumsum(np.bincount(lev1, minlength=Q1))  # (Q1,) leaving at k1 with level q1
        gain1 = np.rint(np.cumsum(np.bincount(lev1, weights=w1, minlength=Q1))).astype(np.int64)
        base_c = base_correct + int(cL.sum())
        order = np.argsort(lev1, kind="stable")
        lev1s, lev2s, w2s = lev1[order], lev2[order], w2[order]
        starts = np.searchsorted(lev1s, np.arange(Q1 + 1))  # images with lev1 == p: starts[p]:starts[p+1]
        # Histogram rows p >= t of (lev2) for images not leaving at k1 when q1 < t; grows upward.
        tail_cnt = np.zeros(Q2, dtype=np.int64)
        tail_gain = np.zeros(Q2, dtype=np.float64)
        # Pruning: rows q1 >= s can gain at most the images with w2 > 0 among lev1 > s at k2.
        pos = np.bincount(lev1, weights=(w2 > 0), minlength=Q1)
        pos_after = np.rint(np.concatenate([np.cumsum(pos[::-1])[::-1][1:], [0.0]])).astype(np.int64)
        block = max(1, _BLOCK_ELEMS // Q2)
        for t in range(Q1, 0, -block):
            s = max(0, t - block)
            a, b = starts[s], starts[t]
            # Cost falls with q1 (more leave at k1, C1 < C2); cheapest: row t-1, all others at k2.
            min_cost = base_cost + int(cnt1[t - 1] * C[k1] + (n - cnt1[t - 1]) * C[k2]) + int(self.NF[k1])
            max_correct = base_c + int(gain1[s:t].max()) + int(pos_after[s])
            if consumer.can_skip(max_correct, min_cost):
                np.add.at(tail_cnt, lev2s[a:b], 1)
                np.add.at(tail_gain, lev2s[a:b], w2s[a:b])
                continue
            flat = (lev1s[a:b] - s) * Q2 + lev2s[a:b]
            H = np.bincount(flat, minlength=(t - s) * Q2).reshape(t - s, Q2)
            G = np.bincount(flat, weights=w2s[a:b], minlength=(t - s) * Q2).reshape(t - s, Q2)
            # Rows q1 in [s, t) see images with lev1 in (q1, t) plus the tail: exclusive suffix sums.
            Hs = np.cumsum(H[::-1], 0)[::-1]
            Gs = np.cumsum(G[::-1], 0)[::-1]
            Hx = np.concatenate([Hs[1:], np.zeros((1, Q2), np.int64)]) + tail_cnt
            Gx = np.concatenate([Gs[1:], np.zeros((1, Q2))]) + tail_gain
            cnt2 = np.cumsum(Hx, 1)  # (t-s, Q2) leaving at k2 with levels (q1, q2)
            gain2 = np.rint(np.cumsum(Gx, 1)).astype(np.int64)
            c1 = cnt1[s:t, None]
            correct = base_c + gain1[s:t, None] + gain2
            rest = n - c1 - cnt2
            cost = (base_cost + c1 * C[k1] + cnt2 * C[k2] + rest * C[L]
                    + np.where(rest > 0, self.NF[L], np.where(cnt2 > 0, self.NF[k2], self.NF[k1])))

            def decode(i: int, s: int = s) -> dict[int, float]:
                r, q2 = divmod(i, Q2)
                return {**fixed, k1: float(v1[s + r]), k2: float(v2[q2])}

            consumer.offer(correct, cost, decode)
            tail_cnt += Hs[0]
            tail_gain += Gs[0]


def _threshold(conf_row: np.ndarray, value: float) -> float:
    """Half-way between ``value`` (a confidence of this exit) and the next lower distinct confidence."""
    uniq = np.unique(conf_row)  # ascending
    i = int(np.searchsorted(uniq, value, side="left"))
    below = float(uniq[i - 1]) if i > 0 else 0.0
    return (float(value) + below) / 2.0


def calibrate(table: ExitTable, body: Sequence[int], heads: Sequence[int], budget: float,
              elastic_exits: bool = True, grid: int | None = 16, calls: Calls | None = None) -> Policy | None:
    """The most accurate policy with expected MACs <= ``budget`` (None if none fits).

    Args:
        table: the candidate's cached validation pass (all K exits).
        body: (K,) cost per image of each stage's body increment: MACs (``net.stage_macs``), or any
            additive integer cost such as predicted nanoseconds (:class:`~enas4d.search.latency.LatencyCosts`).
        heads: (K,) cost per image of each exit head, same unit.
        budget: average cost per image, same unit.
        elastic_exits: may exits before the last be disabled (the space's ``elastic_exits``)?
        grid: threshold levels per exit for the first ``m - 2`` of ``m >= 3`` exits (see module
            docstring); ``None`` makes them exact too (``O(N^(m-1))``, small cases only).
        calls: per-call (body, heads) costs, per image of the batch, same unit (a latency's; see
            the module docstring and :func:`expected_cost`); None: none.
    """
    K, N = table.correct.shape
    if N == 0:
        raise ValueError("calibrate: the validation table is empty (0 images)")
    if len(body) != K or len(heads) != K:
        raise ValueError(f"calibrate: body and heads need {K} values, got {len(body)} and {len(heads)}")
    limit = math.floor(budget * N)  # integer totals: sum of MACs over images <= budget * N
    best: Policy | None = None
    gap = 0  # images; the bound is the largest over the subsets searched (module docstring)
    for exits in exit_subsets(K, elastic_exits):
        costs, call = exit_costs(body, heads, exits), _call_costs(calls, exits)
        ks = [k for k in range(K - 1) if exits[k]]
        first = ks[0] if ks else K - 1
        if (costs[first] + call[first]) * N > limit:
            continue  # even "everyone leaves at the first exit" is over budget
        en = _Enumerator(table, costs, ks, grid, None, call)
        gap = max(gap, en.gap)
        consumer = _Best(limit)
        en.run(consumer)
        if consumer.levels is None:
            continue
        ths = [None if not on else (0.0 if k == K - 1 else _threshold(table.conf[k], consumer.levels[k]))
               for k, on in enumerate(exits)]
        pol = simulate(table, exits, ths, body, heads, calls)
        if (pol.correct, pol.total_macs) != (consumer.correct, consumer.cost):
            raise AssertionError(f"calibrate: enumeration {consumer.correct, consumer.cost} disagrees with "
                                 f"simulation {pol.correct, pol.total_macs} for exits {exits}")
        if best is None or (pol.correct, -pol.total_macs) > (best.correct, -best.total_macs):
            best = pol
    if best is None:
        return None
    return dataclasses.replace(best, gap_bound=gap / N)


def tradeoff(table: ExitTable, body: Sequence[int], heads: Sequence[int], elastic_exits: bool = True,
             levels: int = 32, calls: Calls | None = None) -> tuple[np.ndarray, list[tuple[bool, ...]]]:
    """Pareto front of (expected MACs, accuracy) over policies on ``levels`` quantile thresholds.

    Returns the front (P, 2), sorted by MACs, and the exit set of each point. For plots and
    tables: every exit's thresholds are restricted to ``levels`` quantiles, so the front is within
    one quantile bin per exit of the exact one (:func:`calibrate` at a point's MACs is exact).
    """
    K, N = table.correct.shape
    pts, owner = [], []
    subsets = exit_subsets(K, elastic_exits)
    for i, exits in enumerate(subsets):
        ks = [k for k in range(K - 1) if exits[k]]
        front = _Front()
        _Enumerator(table, exit_costs(body, heads, exits), ks, levels, levels, _call_costs(calls, exits)).run(front)
        p = pareto_front(np.concatenate(front.points))
        pts.append(p)
        owner += [i] * len(p)
    allp = np.concatenate(pts)
    keep = pareto_indices(allp)
    return (np.stack([allp[keep, 0] / N, allp[keep, 1] / N], 1),
            [subsets[owner[i]] for i in keep])


def pareto_indices(points: np.ndarray) -> np.ndarray:
    """Indices of the rows (cost, value) not dominated by another, ordered by cost."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-points[:, 1], points[:, 0]))  # cost ascending, value descending
    vals = points[order, 1]
    run_max = np.maximum.accumulate(vals)
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = vals[1:] > run_max[:-1]
    return order[keep]


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Rows (cost, value) not dominated by another (lower-or-equal cost and higher value), by cost."""
    return points.reshape(-1, 2)[pareto_indices(points.reshape(-1, 2))]


def cross_fit(table: ExitTable, body: Sequence[int], heads: Sequence[int], budget: float,
              elastic_exits: bool = True, grid: int | None = 16, seed: int = 0,
              calls: Calls | None = None) -> tuple[float, float] | None:
    """Accuracy and average MACs of threshold calibration on images it was *not* fitted on.

    The images are split at random (``seed``) into two halves; thresholds calibrated on one half
    are applied to the other, both ways round, and the held-out results pooled. This removes the
    optimism of reporting a policy on the images its thresholds were chosen on. The held-out MACs
    may exceed ``budget`` a little (the budget is only enforced on the fitting half). None if
    either half has no policy within the budget or there are fewer than 2 images.
    """
    n = table.num_images
    if n < 2:
        return None
    perm = np.random.default_rng(seed).permutation(n)
    halves = (np.sort(perm[: n // 2]), np.sort(perm[n // 2:]))
    correct, total = 0, 0
    for fit, held in (halves, halves[::-1]):
        pol = calibrate(ExitTable(table.correct[:, fit], table.conf[:, fit]), body, heads, budget,
                        elastic_exits, grid, calls)
        if pol is None:
            return None
        res = simulate(ExitTable(table.correct[:, held], table.conf[:, held]), pol.exits, pol.thresholds,
                       body, heads, calls)
        correct += res.correct
        total += res.total_macs
    return correct / n, total / n
