"""Subnet sampling: the sandwich rule, determinism per step, progressive shrinking."""

from __future__ import annotations

import pytest

import enas4d
from enas4d.training.sampling import ELASTIC_DIMS, SHRINK_ORDER, SandwichSampler, middle_subnet, restrict


@pytest.fixture(scope="module")
def space():
    return enas4d.create_supernet("mbv3_cifar", num_classes=10, num_stages=3).space


def test_sandwich_order_and_exits(space):
    subnets = SandwichSampler(space, n_random=2, seed=0).sample(step=5)
    assert len(subnets) == 4
    assert subnets[0] == space.largest().with_all_exits()
    assert subnets[1] == space.smallest().with_all_exits()
    assert all(all(s.exits) for s in subnets)  # training uses every exit
    for s in subnets:
        space.validate(s)


def test_draws_depend_only_on_seed_and_step(space):
    a, b = SandwichSampler(space, 3, seed=7), SandwichSampler(space, 3, seed=7)
    b.sample(0), b.sample(1)  # history must not matter: a resumed run starts at a later step
    assert a.sample(42) == b.sample(42)
    assert a.sample(42) != a.sample(43)
    assert a.sample(42) != SandwichSampler(space, 3, seed=8).sample(42)


def test_restrict_keeps_fixed_dims_at_largest(space):
    largest, s = space.largest(), space.smallest()
    assert all(getattr(s, d) != getattr(largest, d) for d in ELASTIC_DIMS)  # every check below can fail
    r = restrict(space, s, ("kernel",))
    assert r.kernel == s.kernel
    for dim in ("resolution", "width", "depth", "expand"):
        assert getattr(r, dim) == getattr(largest, dim)


def test_progressive_phases(space):
    schedule = [{"start": p, "elastic": list(dims)} for p, dims in zip((0.0, 0.25, 0.5, 0.75), SHRINK_ORDER)]
    sampler = SandwichSampler(space, 2, seed=0, shrinking=schedule)
    largest = space.largest()
    assert sampler.elastic(0.1) == ("resolution",)
    assert sampler.elastic(0.6) == ("resolution", "kernel", "depth")
    assert sampler.elastic(0.9) == ELASTIC_DIMS
    early = sampler.sample(step=1, progress=0.1)
    for s in early[1:]:  # only the resolution may differ from the largest
        assert (s.width, s.kernel, s.depth, s.expand) == (largest.width, largest.kernel, largest.depth,
                                                          largest.expand)
    assert early[1].resolution == min(space.resolutions)
    late = sampler.sample(step=1, progress=0.9)
    assert late[1] == space.smallest().with_all_exits()


@pytest.mark.parametrize("schedule, field", [
    ([{"start": 0.0, "elastic": ["colour"]}], "elastic"),
    ([{"start": 0.5, "elastic": ["kernel"]}], "start must be 0"),
    ([{"start": 0.0, "elastic": ["kernel"]}, {"start": 0.0, "elastic": ["depth"]}], "increase"),
    ([{"begin": 0.0, "elastic": ["kernel"]}], "expected keys"),
])
def test_bad_schedule_names_the_problem(space, schedule, field):
    with pytest.raises(ValueError, match=field):
        SandwichSampler(space, 2, seed=0, shrinking=schedule)


def test_negative_n_random_rejected(space):
    with pytest.raises(ValueError, match="module.n_random"):
        SandwichSampler(space, -1, seed=0)


def test_middle_subnet_lies_between(space):
    mid, lo, hi = middle_subnet(space), space.smallest(), space.largest()
    assert lo.resolution < mid.resolution < hi.resolution
    net = enas4d.create_supernet("mbv3_cifar", num_classes=10, num_stages=3)
    assert net.macs(lo)[-1] < net.macs(mid)[-1] < net.macs(hi)[-1]
