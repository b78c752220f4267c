"""The outer search over architectures: evolution, random search as its baseline, and the dispatch
to the policy-gradient controller (:mod:`~enas4d.search.policy_gradient`).

All three spend exactly ``evaluations`` distinct architectures, counted by one :class:`Ledger`
(unless the feasible space runs out, which stops them with a message rather than looping).
Evolution and random search make every candidate feasible before it is scored: a child whose
cheapest policy is over budget is *repaired* by setting its genes, in a random order, to their
smallest choice until it fits; the smallest subnet is checked to fit before any search starts, so
repair always ends (policy_gradient instead gives an infeasible sample reward 0, unscored). Exit
genes are not searched: each architecture is scored with all exits available and the threshold
calibration picks the exit subset.

Randomness comes from ``make_generator(seed, stream, purpose, step)`` only, so a search restarted with
the same seed proposes the same candidates and finds them in the cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch

from enas4d.space import SearchSpace, Subnet
from enas4d.utils.seed import make_generator

if TYPE_CHECKING:
    from enas4d.search.policy_gradient import ControllerConfig

__all__ = ["ALGORITHMS", "EvolutionConfig", "Scored", "Problem", "Ledger", "repair", "run_search"]

ALGORITHMS = ("evolution", "random", "policy_gradient")
_INIT_KEY, _CHILD_KEY, _RANDOM_KEY, _REPAIR_KEY = 1, 2, 3, 4


@dataclass(frozen=True)
class EvolutionConfig:
    """Settings of the outer search (see conf/search.yaml for the meaning of each)."""

    algorithm: str = "evolution"  # "evolution", "random" or "policy_gradient" (same number of evaluations)
    evaluations: int = 40  # distinct architectures scored
    population: int = 12  # architectures kept between generations
    parents: float = 0.25  # fraction of the population that breeds
    mutation_prob: float = 0.1  # per-gene resampling probability
    crossover_prob: float = 0.5  # fraction of children made by crossover (then mutated)
    seed: int = 0  # seeds every random choice of the search
    max_tries: int = 200  # proposals per new child before the space counts as exhausted
    stream: int = 0  # separates the random streams of searches sharing a seed (dynamic 0, static 1)
    seed_largest: bool = True  # evolution: the first member is the largest subnet (shrunk until feasible)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: {self.algorithm!r} not allowed; allowed values: {list(ALGORITHMS)}")
        if self.evaluations < 1:
            raise ValueError(f"evaluations: must be >= 1, got {self.evaluations}")
        if self.population < 2:
            raise ValueError(f"population: must be >= 2, got {self.population}")
        if not 0 < self.parents <= 1:
            raise ValueError(f"parents: must be in (0, 1], got {self.parents}")
        for name in ("mutation_prob", "crossover_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries: must be >= 1, got {self.max_tries}")


@dataclass(frozen=True)
class Scored:
    """An architecture and its fitness (higher is better) under a problem."""

    arch: Subnet  # with every exit enabled
    fitness: float  # validation accuracy under the problem's constraint
    cost: float  # its expected MACs per image under the problem
    step: int  # 0-based index of its evaluation in this search


def best_first(accuracy: float, cost: float, order: int = 0) -> tuple[float, float, int]:
    """Sort key of "the best candidate" everywhere: more accurate, then cheaper, then found earlier."""
    return (-accuracy, cost, order)


def scored_key(s: Scored) -> tuple[float, float, int]:
    """:func:`best_first` of a scored architecture."""
    return best_first(s.fitness, s.cost, s.step)


class Problem(Protocol):
    """What the search optimises: a feasibility test and a scoring function."""

    budget: float  # MACs per image the cost is held to (policy_gradient's reward divides by it)

    def feasible(self, arch: Subnet) -> bool:
        """Can ``arch`` meet the constraint at all?"""

    def score(self, arch: Subnet) -> tuple[float, float]:
        """(fitness, expected MACs) of a feasible ``arch``."""


def _set_gene(s: Subnet, field: str, k: int, g: int, value: object) -> Subnet:
    """``s`` with one architecture gene (resolution or a grid cell; not an exit) changed."""
    if field == "resolution":
        return dataclasses.replace(s, resolution=int(value))
    grid = [list(row) for row in getattr(s, field)]
    grid[k][g] = int(value)
    return dataclasses.replace(s, **{field: tuple(tuple(row) for row in grid)})


def repair(space: SearchSpace, arch: Subnet, feasible: Callable[[Subnet], bool],
           generator: torch.Generator) -> Subnet | None:
    """Shrink ``arch`` gene by gene (random order, each to its smallest choice) until feasible.

    Returns None only if even the smallest architecture is infeasible.
    """
    if feasible(arch):
        return arch
    genes = [g for g in space.genes if g.field != "exits"]
    for i in torch.randperm(len(genes), generator=generator).tolist():
        gene = genes[i]
        arch = _set_gene(arch, gene.field, gene.k, gene.g, gene.choices[0])
        if feasible(arch):
            return arch
    return None


class Ledger:
    """The distinct architectures scored so far, in evaluation order: what every algorithm counts."""

    def __init__(self, problem: Problem, on_scored: Callable[[Scored], None] | None = None):
        self.problem, self.on_scored = problem, on_scored
        self.seen: dict[str, Scored] = {}  # Subnet.to_json() with every exit -> its score
        self.order: list[Scored] = []

    def __len__(self) -> int:
        """Distinct architectures scored."""
        return len(self.order)

    def __contains__(self, arch: Subnet) -> bool:
        """Was ``arch`` (exits ignored) scored already?"""
        return arch.with_all_exits().to_json() in self.seen

    def evaluate(self, arch: Subnet) -> Scored:
        """The score of ``arch`` (every exit enabled), computed by the problem on first request only."""
        arch = arch.with_all_exits()
        key = arch.to_json()
        if key not in self.seen:
            fitness, cost = self.problem.score(arch)
            sc = Scored(arch, fitness, cost, len(self.order))
            self.seen[key] = sc
            self.order.append(sc)
            if self.on_scored is not None:
                self.on_scored(sc)
        return self.seen[key]


def run_search(space: SearchSpace, problem: Problem, cfg: EvolutionConfig,
               on_scored: Callable[[Scored], None] | None = None,
               rank: Callable[[list[Subnet]], np.ndarray] | None = None,
               screen_factor: int = 1, log: Callable[[str], None] = print,
               controller: ControllerConfig | None = None) -> list[Scored]:
    """Run ``cfg.algorithm`` on ``problem``; every scored architecture, in evaluation order.

    Args:
        space: the search space.
        problem: feasibility and fitness.
        cfg: algorithm settings.
        on_scored: called after each evaluation (progress bars, logging).
        rank: optional predictor, higher is better; with ``screen_factor > 1`` evolution proposes
            that many children per slot and keeps the best-ranked ones (real scores decide the rest).
        screen_factor: children proposed per child evaluated when ``rank`` is given.
        log: where messages (e.g. "space exhausted") go.
        controller: policy_gradient's controller settings (defaults when None).
    """
    ledger = Ledger(problem, on_scored)
    if cfg.algorithm == "policy_gradient":
        # Imported here: policy_gradient builds on this module (Ledger, Problem, EvolutionConfig).
        from enas4d.search.policy_gradient import ControllerConfig, run_policy_gradient

        run_policy_gradient(space, problem, cfg, controller or ControllerConfig(), ledger, log)
    elif cfg.algorithm == "random":
        _Search(space, problem, cfg, ledger, log).random()
    else:
        _Search(space, problem, cfg, ledger, log).evolve(rank, screen_factor if rank is not None else 1)
    return ledger.order


@dataclass(frozen=True)
class _Offspring:
    """Proposes one child of ``parents``: a random parent, crossed (with ``crossover_prob``, when there
    are two or more parents) with another random parent, then mutated."""

    space: SearchSpace
    parents: list[Subnet]
    crossover_prob: float
    mutation_prob: float

    def __call__(self, gen: torch.Generator) -> Subnet:
        parents = self.parents
        a = parents[int(torch.randint(len(parents), (1,), generator=gen))]
        if len(parents) > 1 and float(torch.rand((), generator=gen)) < self.crossover_prob:
            b = parents[int(torch.randint(len(parents), (1,), generator=gen))]
            a = self.space.crossover(a, b, gen)
        return self.space.mutate(a, gen, self.mutation_prob)


@dataclass
class _Search:
    """Random search and evolution over ``space``, spending ``cfg.evaluations`` through ``ledger``."""

    space: SearchSpace
    problem: Problem
    cfg: EvolutionConfig
    ledger: Ledger
    log: Callable[[str], None]

    def fresh(self, propose: Callable[[torch.Generator], Subnet], *keys: int) -> Subnet | None:
        """A feasible, not yet scored architecture, or None after ``max_tries`` proposals.

        Attempt ``t`` for the ``n``-th evaluation proposes from ``make_generator(seed, stream, *keys, n, t)``
        and repairs from the same with ``_REPAIR_KEY`` first.
        """
        cfg, n = self.cfg, len(self.ledger)
        for attempt in range(cfg.max_tries):
            gen = make_generator(cfg.seed, cfg.stream, *keys, n, attempt)
            fix = make_generator(cfg.seed, cfg.stream, _REPAIR_KEY, *keys, n, attempt)
            arch = repair(self.space, propose(gen), self.problem.feasible, fix)
            if arch is not None:
                arch = arch.with_all_exits()
                if arch.to_json() not in self.ledger.seen:
                    return arch
        return None

    def random(self) -> None:
        """Random search: uniform samples until ``evaluations`` (or none new is found)."""
        while len(self.ledger) < self.cfg.evaluations:
            arch = self.fresh(self.space.sample, _RANDOM_KEY)
            if arch is None:
                self.log(f"search: no new feasible architecture in {self.cfg.max_tries} samples; "
                         f"stopping after {len(self.ledger)} evaluations")
                return
            self.ledger.evaluate(arch)

    def initial_population(self) -> bool:
        """Score the first ``population`` members (the largest feasible subnet first if ``seed_largest``,
        then uniform samples); False if the feasible space ran out first."""
        cfg, ledger = self.cfg, self.ledger
        if cfg.seed_largest:
            # Uniform samples are mid-sized; the largest architecture that fits anchors the top end.
            largest = repair(self.space, self.space.largest(), self.problem.feasible,
                             make_generator(cfg.seed, cfg.stream, _REPAIR_KEY, _INIT_KEY))
            if largest is not None:
                ledger.evaluate(largest)
        while len(ledger) < min(cfg.population, cfg.evaluations):
            arch = self.fresh(self.space.sample, _INIT_KEY)
            if arch is None:
                self.log(f"search: the feasible space has only {len(ledger)} architectures; stopping")
                return False
            ledger.evaluate(arch)
        return True

    def evolve(self, rank: Callable[[list[Subnet]], np.ndarray] | None, screen_factor: int) -> None:
        """(mu + lambda) with elitism: the population is the best ``population`` scored so far; each
        generation breeds from its best ``parents`` fraction, until ``evaluations`` or no new child."""
        cfg = self.cfg
        if not self.initial_population():
            return
        n_parents = max(1, round(cfg.parents * cfg.population))
        n_children = max(1, cfg.population - n_parents)
        generation = 0
        while len(self.ledger) < cfg.evaluations:
            generation += 1
            population = sorted(self.ledger.seen.values(), key=scored_key)[:cfg.population]
            parents = [s.arch for s in population[:n_parents]]
            want = min(n_children, cfg.evaluations - len(self.ledger))
            pool = self.children(parents, want * screen_factor)
            if not pool:
                self.log(f"search: no new feasible child in {cfg.max_tries} tries at generation {generation}; "
                         f"stopping after {len(self.ledger)} evaluations")
                return
            if rank is not None and len(pool) > want:
                scores = rank(pool)
                pool = [pool[i] for i in np.argsort(-scores, kind="stable")[:want]]
            for child in pool[:want]:
                self.ledger.evaluate(child)

    def children(self, parents: list[Subnet], count: int) -> list[Subnet]:
        """Up to ``count`` distinct new children of ``parents``: proposal ``j`` draws from the
        ``(_CHILD_KEY, j)`` streams; one that failed or repeats an earlier proposal is dropped."""
        propose = _Offspring(self.space, parents, self.cfg.crossover_prob, self.cfg.mutation_prob)
        pool: list[Subnet] = []
        pool_keys: set[str] = set()
        for j in range(count):
            child = self.fresh(propose, _CHILD_KEY, j)
            if child is None or child.to_json() in pool_keys:
                continue
            pool.append(child)
            pool_keys.add(child.to_json())
        return pool
