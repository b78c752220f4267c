"""Threshold calibration against brute force over every threshold combination on small tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from enas4d.search.calibrate import (ExitTable, calibrate, confidence, cross_fit, exit_costs, pareto_front,
                                     simulate, tradeoff)


def random_table(K: int, N: int, seed: int, levels: int | None = None) -> ExitTable:
    """Later exits more accurate; confidences loosely tied to correctness; ``levels``: forced ties."""
    rng = np.random.default_rng(seed)
    acc = np.linspace(0.5, 0.9, K)[:, None]
    correct = rng.random((K, N)) < acc
    conf = np.clip(0.3 * rng.random((K, N)) + 0.5 * correct * rng.random((K, N)) + 0.1, 0, 1)
    if levels is not None:
        conf = np.round(conf * levels) / levels  # many ties
    return ExitTable(correct, conf.astype(np.float32))


def brute_force(table: ExitTable, body, heads, budget: float) -> tuple[int, int] | None:
    """(correct, total MACs) of the best policy over every exit subset and every threshold,
    including 'never exit here' (inf) for enabled exits; None if nothing fits."""
    K, N = table.correct.shape
    best = None
    for bits in itertools.product((False, True), repeat=K - 1):
        exits = bits + (True,)
        ks = [k for k in range(K - 1) if exits[k]]
        choices = [list(np.unique(table.conf[k]).astype(np.float64)) + [np.inf] for k in ks]
        for combo in itertools.product(*choices):
            ths = [None] * K
            ths[K - 1] = 0.0
            for k, t in zip(ks, combo):
                ths[k] = t
            p = simulate(table, exits, ths, body, heads)
            if p.total_macs <= budget * N:
                key = (p.correct, -p.total_macs)
                if best is None or key > best:
                    best = key
    return None if best is None else (best[0], -best[1])


BODY, HEADS = [100, 150, 200, 250], [10, 20, 30, 40]


@pytest.mark.parametrize("K,N,seed,levels", [(2, 40, 0, None), (2, 30, 1, 5), (3, 25, 2, None),
                                             (3, 30, 3, 6), (3, 12, 4, 3), (4, 10, 5, None), (4, 14, 6, 4)])
def test_calibrate_matches_brute_force(K, N, seed, levels):
    table = random_table(K, N, seed, levels)
    body, heads = BODY[:K], HEADS[:K]
    full = exit_costs(body, heads, (True,) * K)[-1]
    for frac in (0.3, 0.45, 0.6, 0.8, 1.0, 1.5):
        budget = frac * full
        ref = brute_force(table, body, heads, budget)
        got = calibrate(table, body, heads, budget, grid=None)
        if ref is None:
            assert got is None
            continue
        assert (got.correct, got.total_macs) == ref, (frac, got)
        assert got.gap_bound == 0.0
        assert got.expected_macs <= budget
        # The reported thresholds reproduce the result by plain simulation.
        again = simulate(table, got.exits, got.thresholds, body, heads)
        assert (again.correct, again.total_macs, again.counts) == (got.correct, got.total_macs, got.counts)


def test_gridded_calibration_within_its_bound():
    """K=4 with all three early exits: the first is gridded; accuracy within the proven gap."""
    table = random_table(4, 16, 7)
    body, heads = BODY, HEADS
    full = exit_costs(body, heads, (True,) * 4)[-1]
    for frac in (0.4, 0.6, 0.9):
        ref = brute_force(table, body, heads, frac * full)
        got = calibrate(table, body, heads, frac * full, grid=3)
        assert got.expected_macs <= frac * full
        assert got.correct <= ref[0]
        assert got.accuracy >= ref[0] / 16 - got.gap_bound - 1e-12
        assert got.gap_bound > 0  # 16 distinct values on a 3-level grid are not exact


def test_disabled_exit_head_not_counted():
    """A never-useful middle exit gets disabled and its head MACs disappear from the cost."""
    N = 20
    correct = np.array([[True] * N, [False] * N, [True] * N])
    conf = np.array([[0.9] * N, [0.1] * N, [1.0] * N], dtype=np.float32)
    body, heads = [100, 100, 100], [10, 50, 10]
    pol = calibrate(ExitTable(correct, conf), body, heads, budget=110)
    assert pol.exits == (True, False, True)
    assert pol.thresholds[1] is None and pol.counts == (N, 0, 0)
    assert pol.expected_macs == 110 and pol.accuracy == 1.0
    assert exit_costs(body, heads, pol.exits) == [110, 0, 320]
    assert pol.exit_macs == (110, 0, 320)


def test_infeasible_budget_returns_none_and_last_threshold_accepts():
    table = random_table(3, 20, 8)
    assert calibrate(table, BODY[:3], HEADS[:3], budget=BODY[0] + HEADS[0] - 1) is None
    pol = calibrate(table, BODY[:3], HEADS[:3], budget=1e9)
    assert pol.thresholds[-1] == 0.0
    # Unconstrained: at least as accurate as the best single exit.
    assert pol.correct >= table.correct.sum(1).max()


def test_tradeoff_front_is_monotone_and_bounded_by_calibration():
    table = random_table(3, 200, 9)
    body, heads = BODY[:3], HEADS[:3]
    front, exits = tradeoff(table, body, heads, levels=16)
    assert np.all(np.diff(front[:, 0]) > 0) and np.all(np.diff(front[:, 1]) > 0)
    assert len(exits) == len(front) and all(e[-1] for e in exits)
    assert exits[0] == (True, False, True)  # the cheapest point: everyone at exit 1, no other head
    # Every front point is achievable, so exact calibration at its cost is at least as accurate.
    for macs, acc in front[:: max(1, len(front) // 6)]:
        assert calibrate(table, body, heads, macs + 1e-9).accuracy >= acc - 1e-12


def test_pareto_front():
    pts = np.array([[3, 0.5], [1, 0.2], [2, 0.2], [2, 0.6], [4, 0.6], [5, 0.9]])
    assert pareto_front(pts).tolist() == [[1, 0.2], [2, 0.6], [5, 0.9]]


@pytest.mark.parametrize("measure", ["max_softmax", "margin", "entropy"])
def test_confidence_measures_in_unit_interval_and_ordered(measure):
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 0.0]])
    pred, conf = confidence(logits, measure)
    assert pred[:2].tolist() == [0, 0]
    assert torch.all((conf >= 0) & (conf <= 1))
    assert conf[0] > conf[1] > conf[2] - 1e-6  # confident > ambiguous >= uniform
    with pytest.raises(ValueError, match="allowed values"):
        confidence(logits, "bogus")


def test_blocked_sweep_equals_single_block(monkeypatch):
    """The 2-D sweep processed in many small row blocks gives the same policy as in one block."""
    import enas4d.search.calibrate as cal

    table = random_table(3, 60, 10)
    body, heads = BODY[:3], HEADS[:3]
    budget = 0.6 * exit_costs(body, heads, (True,) * 3)[-1]
    one = calibrate(table, body, heads, budget)
    monkeypatch.setattr(cal, "_BLOCK_ELEMS", 7)  # rows per block = 7 // D2 -> 1
    many = calibrate(table, body, heads, budget)
    assert (many.correct, many.total_macs, many.thresholds) == (one.correct, one.total_macs, one.thresholds)
    assert (one.correct, one.total_macs) == brute_force(table, body, heads, budget)


def test_cross_fit_scores_each_half_with_the_other_halfs_thresholds():
    table = random_table(3, 200, seed=7)
    body, heads = BODY[:3], HEADS[:3]
    budget = 0.5 * (exit_costs(body, heads, (True,) * 3)[0] + exit_costs(body, heads, (True,) * 3)[-1])
    got = cross_fit(table, body, heads, budget, grid=None, seed=3)
    perm = np.random.default_rng(3).permutation(200)
    a, b = np.sort(perm[:100]), np.sort(perm[100:])
    sub = lambda idx: ExitTable(table.correct[:, idx], table.conf[:, idx])  # noqa: E731
    correct = total = 0
    for fit, held in ((a, b), (b, a)):
        pol = calibrate(sub(fit), body, heads, budget, grid=None)
        res = simulate(sub(held), pol.exits, pol.thresholds, body, heads)
        correct, total = correct + res.correct, total + res.total_macs
    assert got == (correct / 200, total / 200)
    assert cross_fit(table, body, heads, 0.0) is None  # nothing fits a zero budget
