"""Outer search on synthetic problems (no network): counts, feasibility, determinism, termination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import enas4d
from enas4d.search.calibrate import min_cost
from enas4d.search.evolution import EvolutionConfig, repair, run_search
from enas4d.space import SearchSpace, Subnet


class ToyProblem:
    """Fitness rewards large stage-2+ choices; feasibility caps the first exit's analytic MACs."""

    def __init__(self, net, budget: float):
        self.net, self.budget, self.calls = net, budget, 0

    def feasible(self, arch: Subnet) -> bool:
        return min_cost(*self.net.stage_macs(arch.with_all_exits())) <= self.budget

    def score(self, arch: Subnet) -> tuple[float, float]:
        assert self.feasible(arch), "the search scored an infeasible architecture"
        self.calls += 1
        enc = np.array(self.net.space.encode(arch))
        return float(enc.mean()), float(min_cost(*self.net.stage_macs(arch)))


@pytest.fixture(scope="module")
def net():
    return enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=3, in_chans=3)


def tight_budget(net) -> float:
    """Half-way between the smallest and largest first-exit cost: many samples are infeasible."""
    sp = net.space
    lo, hi = min_cost(*net.stage_macs(sp.smallest())), min_cost(*net.stage_macs(sp.largest()))
    return (lo + hi) / 2


@pytest.mark.parametrize("algorithm", ["evolution", "random"])
def test_exact_number_of_distinct_feasible_evaluations(net, algorithm):
    prob = ToyProblem(net, tight_budget(net))
    cfg = EvolutionConfig(algorithm=algorithm, evaluations=14, population=6, seed=3)
    out = run_search(net.space, prob, cfg, log=lambda m: None)
    assert len(out) == 14 == prob.calls
    assert len({s.arch.to_json() for s in out}) == 14
    assert all(prob.feasible(s.arch) and all(s.arch.exits) for s in out)
    assert [s.step for s in out] == list(range(14))


def test_same_seed_same_search_other_seed_differs(net):
    budget = tight_budget(net)
    cfg = EvolutionConfig(evaluations=10, population=4, seed=1)
    a = [s.arch for s in run_search(net.space, ToyProblem(net, budget), cfg)]
    b = [s.arch for s in run_search(net.space, ToyProblem(net, budget), cfg)]
    c = [s.arch for s in run_search(net.space, ToyProblem(net, budget), EvolutionConfig(evaluations=10, population=4,
                                                                                        seed=2))]
    assert a == b and a != c


def test_evolution_beats_random_on_a_smooth_objective(net):
    """Averaged over seeds, evolution's best exceeds random search's at equal evaluations."""
    budget = tight_budget(net)
    evo, rnd = [], []
    for seed in range(3):
        for algo, acc in (("evolution", evo), ("random", rnd)):
            cfg = EvolutionConfig(algorithm=algo, evaluations=40, population=8, seed=seed, mutation_prob=0.2,
                                  seed_largest=False)  # the operators alone, not the seeding
            acc.append(max(s.fitness for s in run_search(net.space, ToyProblem(net, budget), cfg)))
    assert np.mean(evo) > np.mean(rnd)


def test_evolution_starts_from_the_largest_feasible_architecture(net):
    sp = net.space
    loose = ToyProblem(net, float("inf"))
    first = run_search(sp, loose, EvolutionConfig(evaluations=3, population=3, seed=0))[0]
    assert first.arch == sp.largest().with_all_exits()
    tight = ToyProblem(net, tight_budget(net))
    assert not tight.feasible(sp.largest())
    first = run_search(sp, tight, EvolutionConfig(evaluations=3, population=3, seed=0))[0]
    assert tight.feasible(first.arch) and first.arch != sp.largest().with_all_exits()
    # Shrunk from the largest gene by gene: some genes keep their largest choice.
    kept = [a == b for a, b in zip(sp.encode(first.arch), sp.encode(sp.largest()))]
    assert any(kept)
    off = run_search(sp, loose, EvolutionConfig(evaluations=3, population=3, seed=0, seed_largest=False))
    assert sp.largest().with_all_exits() not in [s.arch for s in off]
    rnd = run_search(sp, loose, EvolutionConfig(algorithm="random", evaluations=3, seed=0))
    assert sp.largest().with_all_exits() not in [s.arch for s in rnd]  # the baseline stays uniform


def test_repair_makes_feasible_and_respects_impossible(net):
    prob = ToyProblem(net, tight_budget(net))
    big = net.space.largest()
    assert not prob.feasible(big)
    fixed = repair(net.space, big, prob.feasible, torch.Generator().manual_seed(0))
    assert fixed is not None and prob.feasible(fixed)
    assert repair(net.space, big, lambda s: False, torch.Generator().manual_seed(0)) is None


def test_small_feasible_space_stops_instead_of_looping():
    """4 architectures exist; asking for 10 evaluations ends (with a message) instead of looping."""
    space = SearchSpace(widths=(((1, 2),), ((1, 2),)), kernels=(((3,),), ((3,),)), depths=(((1,),), ((1,),)),
                        expands=None, resolutions=(8,))

    class P:
        def feasible(self, arch):
            return True

        def score(self, arch):
            return float(arch.width[1][0]), 1.0

    for algo in ("evolution", "random"):
        msgs: list[str] = []
        out = run_search(space, P(), EvolutionConfig(algorithm=algo, evaluations=10, population=2, max_tries=30),
                         log=msgs.append)
        assert msgs and "stopping" in msgs[0]
        # Random sampling finds all 4; evolution (mutating its one parent) may stop before.
        assert len(out) == 4 if algo == "random" else 2 <= len(out) <= 4


def test_predictor_screening_is_used(net):
    """With a rank function, children are chosen among screen_factor x proposals by that rank."""
    budget = tight_budget(net)
    seen_pools: list[int] = []

    def rank(archs):
        seen_pools.append(len(archs))
        return np.array([net.space.encode(a)[0] for a in archs])

    cfg = EvolutionConfig(evaluations=12, population=4, seed=0)
    out = run_search(net.space, ToyProblem(net, budget), cfg, rank=rank, screen_factor=3)
    assert len(out) == 12
    assert seen_pools and max(seen_pools) > 3  # more proposals than children per generation


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="algorithm"):
        EvolutionConfig(algorithm="annealing")
    with pytest.raises(ValueError, match="population"):
        EvolutionConfig(population=1)
    with pytest.raises(ValueError, match="mutation_prob"):
        EvolutionConfig(mutation_prob=1.5)
