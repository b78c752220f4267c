"""Which subnets are trained at each step: the sandwich rule, optionally progressive shrinking.

Every step trains the largest subnet, the smallest subnet and ``n_random`` random ones. The random
draws come from ``make_generator(seed, _SAMPLER_KEY, step)``: a pure function of the optimizer
step, so a resumed run and every DDP rank draw exactly the subnets an uninterrupted single-process
run draws, with no generator state to save.

Progressive shrinking (once-for-all) restricts which elastic dimensions may vary during phases of
training: a dimension that is not yet elastic is held at the largest subnet's value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from enas4d.space import SearchSpace, Subnet
from enas4d.utils.seed import make_generator

__all__ = ["ELASTIC_DIMS", "SHRINK_ORDER", "SandwichSampler", "ShrinkPhase", "middle_subnet", "restrict"]

# Subnet fields that training may hold fixed (exits are always all enabled while training).
ELASTIC_DIMS = ("resolution", "kernel", "depth", "width", "expand")
# Once-for-all's order: resolution from the start, then kernel, then depth, then width/expand.
SHRINK_ORDER = (("resolution",), ("resolution", "kernel"), ("resolution", "kernel", "depth"), ELASTIC_DIMS)
_SAMPLER_KEY = 11  # second make_generator key: keeps this stream apart from data streams
STATE_VERSION = 1  # version of SandwichSampler.state_dict()


@dataclass(frozen=True)
class ShrinkPhase:
    """One phase of progressive shrinking."""

    start: float  # fraction of all training steps at which the phase begins, in [0, 1)
    elastic: tuple[str, ...]  # dimensions sampled in this phase; the others stay at the largest


def restrict(space: SearchSpace, s: Subnet, elastic: Sequence[str]) -> Subnet:
    """``s`` with every dimension not in ``elastic`` set to the largest subnet's value."""
    largest = space.largest()
    fixed = {d: getattr(largest, d) for d in ELASTIC_DIMS if d not in elastic}
    return space.validate(dataclasses.replace(s, **fixed))


def middle_subnet(space: SearchSpace) -> Subnet:
    """The middle subnet of ``space`` (one definition: :meth:`SearchSpace.middle`)."""
    return space.middle()


def _parse_schedule(schedule: Sequence[dict[str, Any]] | None) -> tuple[ShrinkPhase, ...]:
    """Validate a schedule given as ``[{"start": float, "elastic": [dim, ...]}, ...]``."""
    if not schedule:
        return ()
    phases = []
    for i, entry in enumerate(schedule):
        if set(entry) != {"start", "elastic"}:
            raise ValueError(f"module.shrinking[{i}]: expected keys ['elastic', 'start'], got {sorted(entry)}")
        start, elastic = float(entry["start"]), tuple(str(d) for d in entry["elastic"])
        bad = [d for d in elastic if d not in ELASTIC_DIMS]
        if bad:
            raise ValueError(f"module.shrinking[{i}].elastic: {bad} not allowed; allowed values: {list(ELASTIC_DIMS)}")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"module.shrinking[{i}].start={start} not allowed; allowed values: [0, 1)")
        phases.append(ShrinkPhase(start, elastic))
    if phases[0].start != 0.0:
        raise ValueError("module.shrinking[0].start must be 0 (the first phase starts with training)")
    if any(b.start <= a.start for a, b in zip(phases, phases[1:])):
        raise ValueError("module.shrinking: phase starts must increase strictly")
    return tuple(phases)


class SandwichSampler:
    """The subnets of one training step: largest, smallest, then ``n_random`` random ones.

    Args:
        space: the supernet's search space.
        n_random: random subnets per step besides the largest and the smallest (>= 0).
        seed: base seed; the draws of step ``t`` depend only on ``(seed, t)``.
        shrinking: optional progressive-shrinking phases, as dicts ``{"start", "elastic"}``; the
            smallest and random subnets of a phase vary only its elastic dimensions.
    """

    def __init__(self, space: SearchSpace, n_random: int, seed: int,
                 shrinking: Sequence[dict[str, Any]] | None = None):
        if n_random < 0:
            raise ValueError(f"module.n_random={n_random} not allowed; allowed values: integers >= 0")
        self.space, self.n_random, self.seed = space, int(n_random), int(seed)
        self.phases = _parse_schedule(shrinking)
        self._largest, self._smallest = space.largest(), space.smallest()  # fixed: not rebuilt per step

    def elastic(self, progress: float) -> tuple[str, ...]:
        """Elastic dimensions at ``progress`` (fraction of training done, in [0, 1])."""
        current = ELASTIC_DIMS
        for phase in self.phases:
            if progress >= phase.start:
                current = phase.elastic
        return current

    def sample(self, step: int, progress: float = 1.0) -> list[Subnet]:
        """Distinct subnets of step ``step``: ``[largest, smallest, random_1..n]`` without repeats, all exits on."""
        elastic = self.elastic(progress)
        gen = make_generator(self.seed, _SAMPLER_KEY, step)
        varied = [self._smallest, *(self.space.sample(gen) for _ in range(self.n_random))]
        if set(elastic) != set(ELASTIC_DIMS):
            varied = [restrict(self.space, s, elastic) for s in varied]
        out: list[Subnet] = []
        for s in (self._largest, *varied):  # a subnet drawn twice would only be trained twice
            s = s.with_all_exits()
            if s not in out:
                out.append(s)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything the draws depend on (stored in checkpoints to check a resume)."""
        return {"version": STATE_VERSION, "seed": self.seed, "n_random": self.n_random,
                "shrinking": [{"start": p.start, "elastic": list(p.elastic)} for p in self.phases]}
