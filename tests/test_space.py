"""The search space: one definition, its operations and its errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import enas4d
from enas4d.space import InvalidSubnetError, SearchSpace, Subnet


@pytest.fixture(params=[n for n in enas4d.list_supernets() if not n.endswith("_static")])  # elastic spaces
def space(request) -> SearchSpace:
    return enas4d.create_supernet(request.param, num_classes=10, num_stages=3).space


def test_sample_is_valid_and_seeded(space):
    a = [space.sample(torch.Generator().manual_seed(7)) for _ in range(2)]
    assert a[0] == a[1]
    samples = {space.sample(torch.Generator().manual_seed(i)) for i in range(20)}
    assert len(samples) > 10  # the space is large; 20 draws should rarely collide
    for s in samples:
        assert space.validate(s) is s
        assert s.exits[-1] is True


def test_smallest_and_largest_bound_every_choice(space):
    lo, hi = space.smallest(), space.largest()
    for gene, vl, vh in zip(space.genes, space._to_genome(lo), space._to_genome(hi)):
        if gene.field != "exits":
            assert vl == min(gene.choices) and vh == max(gene.choices)
    assert all(lo.exits) and all(hi.exits)


def test_json_round_trip(space):
    s = space.sample(torch.Generator().manual_seed(3))
    d = json.loads(json.dumps(space.to_dict(s)))
    assert space.from_dict(d) == s
    assert SearchSpace.from_config(json.loads(json.dumps(space.to_config()))) == space


def test_mutate_and_crossover_stay_in_space(space):
    gen = torch.Generator().manual_seed(0)
    a, b = space.smallest(), space.largest()
    assert space.mutate(a, gen, prob=0.0) == a
    changed = space.mutate(a, gen, prob=1.0)
    space.validate(changed)
    child = space.crossover(a, b, gen)
    for gene, va, vb, vc in zip(space.genes, space._to_genome(a), space._to_genome(b), space._to_genome(child)):
        assert vc in (va, vb)
    assert child not in (a, b)  # with this many genes, uniform crossover mixes both parents


def test_encode_fixed_length_in_unit_range(space):
    gen = torch.Generator().manual_seed(1)
    vecs = [space.encode(space.sample(gen)) for _ in range(5)]
    assert all(len(v) == space.encoding_size for v in vecs)
    assert all(0.0 <= x <= 1.0 for v in vecs for x in v)
    assert space.encode(space.smallest()) != space.encode(space.largest())


def test_validate_names_field_and_allowed_values():
    space = enas4d.create_supernet("resnet_cifar", num_stages=2).space
    s = space.largest()
    with pytest.raises(InvalidSubnetError, match=r"subnet.resolution=30 is not allowed; allowed values: \[24, 28, 32\]"):
        space.validate(dataclasses.replace(s, resolution=30))
    with pytest.raises(InvalidSubnetError, match=r"depth\[1\]\[0\]=4 .*\[1, 2, 3\]"):
        space.validate(dataclasses.replace(s, depth=(s.depth[0], (4, 3, 3))))
    with pytest.raises(InvalidSubnetError, match="subnet.expand: expected None"):
        space.validate(dataclasses.replace(s, expand=s.width))
    with pytest.raises(InvalidSubnetError, match=r"exits\[1\]=False"):
        space.validate(dataclasses.replace(s, exits=(True, False)))
    with pytest.raises(InvalidSubnetError, match="expected keys"):
        Subnet.from_dict({"resolution": 32})


def test_space_rejects_ragged_grids():
    with pytest.raises(ValueError, match="space.kernels"):
        SearchSpace(widths=(((1,), (2,)),), kernels=(((3,),),), depths=(((1,), (1,)),), expands=None,
                    resolutions=(32,))


@pytest.mark.parametrize("field, value, allowed", [
    ("resolution", 32.9, "resolution=32.9"),
    ("resolution", 32.0, "resolution=32.0"),  # a float is not an int, even a whole one
    ("resolution", "32", "resolution='32'"),
    ("width", 6.9, r"width\[0\]\[1\]=6.9"),
    ("width", True, r"width\[0\]\[1\]=True"),
])
def test_from_dict_rejects_non_integers(field, value, allowed):
    """Nothing is coerced: 32.9 is not resolution 32, 6.9 is not width 6."""
    s = enas4d.create_supernet("resnet_cifar", num_stages=2).space.largest()
    d = s.to_dict()
    if field == "width":
        d["width"][0][1] = value
    else:
        d[field] = value
    with pytest.raises(InvalidSubnetError, match=rf"subnet\.{allowed} is not allowed; allowed values: integers"):
        Subnet.from_dict(d)


@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_from_dict_rejects_non_bool_exits(value):
    d = enas4d.create_supernet("resnet_cifar", num_stages=2).space.largest().to_dict()
    d["exits"][0] = value
    with pytest.raises(InvalidSubnetError, match=r"subnet\.exits\[0\]=.* is not allowed; allowed values: true or false"):
        Subnet.from_dict(d)


def test_from_dict_rejects_strings_and_flat_lists():
    d = enas4d.create_supernet("resnet_cifar", num_stages=2).space.largest().to_dict()
    with pytest.raises(InvalidSubnetError, match="subnet.exits: expected a list of bools"):
        Subnet.from_dict(d | {"exits": "TT"})
    with pytest.raises(InvalidSubnetError, match=r"subnet.kernel\[0\]: expected a list of integers"):
        Subnet.from_dict(d | {"kernel": [3, 3]})


def test_space_from_dict_names_the_candidates_of_a_wrong_type():
    space = enas4d.create_supernet("resnet_cifar", num_stages=2).space
    d = space.largest().to_dict()
    with pytest.raises(InvalidSubnetError, match=r"subnet.resolution=32.9 is not allowed; allowed values: \[24, 28, 32\]"):
        space.from_dict(d | {"resolution": 32.9})
    d["exits"][0] = "false"
    with pytest.raises(InvalidSubnetError, match=r"subnet.exits\[0\]='false' is not allowed; allowed values: \[False, True\]"):
        space.from_dict(d)
    assert space.from_dict(space.largest().to_dict()) == space.largest()  # what to_dict writes still reads
