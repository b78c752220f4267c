"""The two problems a search solves for a budget: early-exit subnets (:class:`DynamicProblem`: fitness
the accuracy of the best threshold policy within the budget) and single-exit subnets (:class:`StaticProblem`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from enas4d.search.calibrate import Policy, calibrate, forced_exit_costs, min_cost
from enas4d.search.evaluator import CandidateEvaluator, SearchError
from enas4d.space import Subnet

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
    return apply_exits(arch, (False,) * (arch.num_stages - 1) + (True,))


def apply_exits(arch: Subnet, exits: tuple[bool, ...]) -> Subnet:
    """``arch`` with the policy's exit set."""
    return dataclasses.replace(arch, exits=tuple(exits))

