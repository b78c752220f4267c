"""The search space of a multi-stage supernet, defined once.

A :class:`SearchSpace` holds the candidate values of every elastic choice; a :class:`Subnet` holds
one value per choice. Everything else (sampling, mutation, crossover, encoding, JSON, validation,
training, search, export) reads these two classes, never a copy of their layout.

Indexing convention: ``[k][g]`` is stage (exit) ``k`` and group ``g``, both 0-based in code.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass
from typing import Any, Iterator

import torch

Grid = tuple[tuple[int, ...], ...]  # [k][g] -> one value
ChoiceGrid = tuple[tuple[tuple[int, ...], ...], ...]  # [k][g] -> candidate values

_GRID_FIELDS = ("width", "kernel", "depth", "expand")


class InvalidSubnetError(ValueError):
    """A subnet that does not belong to its space; the message names the field and allowed values."""


class _WrongTypeError(InvalidSubnetError):
    """A value of the wrong type in a subnet's dict form, at ``path`` (e.g. ``width[1][2]``)."""

    def __init__(self, path: str, value: Any, allowed: str):
        super().__init__(f"subnet.{path}={value!r} is not allowed; allowed values: {allowed}")
        self.path, self.value = path, value


def _int_value(v: Any, path: str) -> int:
    """``v`` if it is an integer (not a bool, not a float such as 32.9 or 32.0), else _WrongTypeError."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise _WrongTypeError(path, v, "integers")
    return int(v)


def _bool_value(v: Any, path: str) -> bool:
    """``v`` if it is a bool (JSON true/false; not "false", not 0 or 1), else _WrongTypeError."""
    if not isinstance(v, bool):
        raise _WrongTypeError(path, v, "true or false")
    return v


def _list_value(v: Any, path: str, of: str) -> list[Any]:
    """``v`` if it is a list or tuple, else InvalidSubnetError (a string is not a list of values)."""
    if not isinstance(v, (list, tuple)):
        raise InvalidSubnetError(f"subnet.{path}: expected a list of {of}, got {v!r}")
    return list(v)


@dataclass(frozen=True)
class Subnet:
    """One value for every elastic choice of a :class:`SearchSpace`."""

    resolution: int  # input side in pixels; the model resizes its input to it
    width: Grid  # [k][g] channels slice k adds in group g
    kernel: Grid  # [k][g] kernel size of slice k's spatial convs in group g
    depth: Grid  # [k][g] blocks of group g that slice k runs (block 0 always runs)
    expand: Grid | None  # [k][g] expand ratio of slice k's hidden slice (MBConv only), else None
    exits: tuple[bool, ...]  # [k] exit k usable by the policy; the last is always True

    @property
    def num_stages(self) -> int:
        """Number of stages K."""
        return len(self.exits)

    def with_all_exits(self) -> "Subnet":
        """The same architecture with every exit enabled (what training uses)."""
        return dataclasses.replace(self, exits=(True,) * len(self.exits))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists, not tuples)."""
        d: dict[str, Any] = {"resolution": self.resolution}
        for name in _GRID_FIELDS:
            grid = getattr(self, name)
            d[name] = None if grid is None else [list(row) for row in grid]
        d["exits"] = list(self.exits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Subnet":
        """Inverse of :meth:`to_dict`; raises InvalidSubnetError on missing or extra keys and on any
        value of another type (nothing is coerced: 32.9 is not 32, "false" is not a bool)."""
        expected = {"resolution", "exits", *_GRID_FIELDS}
        if not isinstance(d, dict) or set(d) != expected:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise InvalidSubnetError(f"subnet: expected keys {sorted(expected)}, got {got}")

        def grid(v: Any, name: str) -> Grid | None:
            if v is None:
                return None
            rows = [_list_value(row, f"{name}[{k}]", "integers")
                    for k, row in enumerate(_list_value(v, name, "lists of integers"))]
            return tuple(tuple(_int_value(x, f"{name}[{k}][{g}]") for g, x in enumerate(row))
                         for k, row in enumerate(rows))

        return cls(
            resolution=_int_value(d["resolution"], "resolution"),
            width=grid(d["width"], "width"),
            kernel=grid(d["kernel"], "kernel"),
            depth=grid(d["depth"], "depth"),
            expand=grid(d["expand"], "expand"),
            exits=tuple(_bool_value(x, f"exits[{k}]") for k, x in enumerate(_list_value(d["exits"], "exits", "bools"))),
        )

    def to_json(self) -> str:
        """Compact JSON string (also a stable cache key)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True)
class _Gene:
    """One elastic choice: where it lives in a Subnet and its candidates."""

    field: str  # "resolution", "exits" or a grid field
    k: int  # stage, -1 for resolution
    g: int  # group, -1 for resolution and exits
    choices: tuple[Any, ...]

    @property
    def path(self) -> str:
        """Human-readable location, e.g. ``width[1][2]``."""
        if self.field == "resolution":
            return "resolution"
        if self.field == "exits":
            return f"exits[{self.k}]"
        return f"{self.field}[{self.k}][{self.g}]"


@dataclass(frozen=True)
class SearchSpace:
    """Candidate values of every elastic choice of a multi-stage supernet."""

    widths: ChoiceGrid  # [k][g] candidate channel counts of slice k in group g
    kernels: ChoiceGrid  # [k][g] candidate kernel sizes
    depths: ChoiceGrid  # [k][g] candidate block counts
    expands: ChoiceGrid | None  # [k][g] candidate expand ratios (MBConv), else None
    resolutions: tuple[int, ...]  # candidate input sides
    elastic_exits: bool = True  # may the policy disable exits before the last?

    def __post_init__(self) -> None:
        k = len(self.widths)
        if k < 1:
            raise ValueError("space: needs at least one stage")
        g = len(self.widths[0])
        for name in ("widths", "kernels", "depths", "expands"):
            grid = getattr(self, name)
            if grid is None:
                continue
            if len(grid) != k or any(len(row) != g for row in grid):
                raise ValueError(f"space.{name}: expected a {k}x{g} grid of candidate tuples")
            if any(len(c) == 0 for row in grid for c in row):
                raise ValueError(f"space.{name}: every cell needs at least one candidate")
        if not self.resolutions:
            raise ValueError("space.resolutions: needs at least one candidate")

    # ----------------------------------------------------------------- shape
    @property
    def num_stages(self) -> int:
        """Number of stages (exits) K."""
        return len(self.widths)

    @property
    def num_groups(self) -> int:
        """Number of groups G (runs of blocks at one spatial resolution)."""
        return len(self.widths[0])

    def _genes(self) -> Iterator[_Gene]:
        """Every elastic choice in a fixed order (the genome layout)."""
        yield _Gene("resolution", -1, -1, tuple(sorted(self.resolutions)))
        grids = {"width": self.widths, "kernel": self.kernels, "depth": self.depths,
                 "expand": self.expands}
        for name in _GRID_FIELDS:
            grid = grids[name]
            if grid is None:
                continue
            for k in range(self.num_stages):
                for g in range(self.num_groups):
                    yield _Gene(name, k, g, tuple(sorted(grid[k][g])))
        for k in range(self.num_stages):
            last = k == self.num_stages - 1
            yield _Gene("exits", k, -1, (True,) if last or not self.elastic_exits else (False, True))

    @property
    def genes(self) -> tuple[_Gene, ...]:
        """The genome layout (cached-free: cheap to rebuild)."""
        return tuple(self._genes())

    def _to_genome(self, s: Subnet) -> list[Any]:
        out: list[Any] = []
        for gene in self._genes():
            if gene.field == "resolution":
                out.append(s.resolution)
            elif gene.field == "exits":
                out.append(s.exits[gene.k])
            else:
                out.append(getattr(s, gene.field)[gene.k][gene.g])
        return out

    def _from_genome(self, values: list[Any]) -> Subnet:
        K, G = self.num_stages, self.num_groups
        grids: dict[str, list[list[int]]] = {n: [[0] * G for _ in range(K)] for n in _GRID_FIELDS}
        res, exits = 0, [True] * K
        for gene, v in zip(self._genes(), values):
            if gene.field == "resolution":
                res = int(v)
            elif gene.field == "exits":
                exits[gene.k] = bool(v)
            else:
                grids[gene.field][gene.k][gene.g] = int(v)

        def freeze(name: str) -> Grid | None:
            if name == "expand" and self.expands is None:
                return None
            return tuple(tuple(row) for row in grids[name])

        return Subnet(res, freeze("width"), freeze("kernel"), freeze("depth"), freeze("expand"),
                      tuple(exits))

    # ------------------------------------------------------------ operations
    def validate(self, s: Subnet) -> Subnet:
        """Return ``s`` if it belongs to the space, else raise InvalidSubnetError naming the field."""
        if not isinstance(s, Subnet):
            raise InvalidSubnetError(f"subnet: expected a Subnet, got {type(s).__name__}")
        K, G = self.num_stages, self.num_groups
        if len(s.exits) != K:
            raise InvalidSubnetError(f"subnet.exits: expected {K} values (one per stage), got {len(s.exits)}")
        if (s.expand is None) != (self.expands is None):
            allowed = "None (this space has no expand ratios)" if self.expands is None else f"a {K}x{G} grid"
            raise InvalidSubnetError(f"subnet.expand: expected {allowed}")
        for name in _GRID_FIELDS:
            grid = getattr(s, name)
            if grid is None:
                continue
            if len(grid) != K or any(len(row) != G for row in grid):
                shape = f"{len(grid)}x" + "/".join(str(len(r)) for r in grid)
                raise InvalidSubnetError(f"subnet.{name}: expected a {K}x{G} grid (stages x groups), got {shape}")
        for gene, v in zip(self._genes(), self._to_genome(s)):
            if v not in gene.choices:
                raise InvalidSubnetError(
                    f"subnet.{gene.path}={v!r} is not allowed; allowed values: {list(gene.choices)}")
        return s

    def sample(self, generator: torch.Generator) -> Subnet:
        """A uniformly random subnet (every choice independent)."""
        genes = self.genes
        idx = [int(torch.randint(len(g.choices), (1,), generator=generator)) for g in genes]
        return self._from_genome([g.choices[i] for g, i in zip(genes, idx)])

    def smallest(self) -> Subnet:
        """The cheapest architecture, with every exit enabled."""
        return self._from_genome([g.choices[0] if g.field != "exits" else True for g in self._genes()])

    def largest(self) -> Subnet:
        """The most expensive architecture, with every exit enabled."""
        return self._from_genome([g.choices[-1] for g in self._genes()])

    def middle(self) -> Subnet:
        """The median candidate of every choice (the lower one of an even count), every exit enabled."""
        return self._from_genome([g.choices[(len(g.choices) - 1) // 2] if g.field != "exits" else True
                                  for g in self._genes()])

    def mutate(self, s: Subnet, generator: torch.Generator, prob: float = 0.1) -> Subnet:
        """Resample each choice independently with probability ``prob``."""
        values = self._to_genome(self.validate(s))
        for i, gene in enumerate(self._genes()):
            if float(torch.rand((), generator=generator)) < prob:
                values[i] = gene.choices[int(torch.randint(len(gene.choices), (1,), generator=generator))]
        return self._from_genome(values)

    def crossover(self, a: Subnet, b: Subnet, generator: torch.Generator) -> Subnet:
        """Uniform crossover: each choice from ``a`` or ``b`` with equal probability."""
        va, vb = self._to_genome(self.validate(a)), self._to_genome(self.validate(b))
        pick = torch.rand(len(va), generator=generator) < 0.5
        return self._from_genome([x if p else y for x, y, p in zip(va, vb, pick.tolist())])

    def encode(self, s: Subnet) -> list[float]:
        """Fixed-length vector in [0, 1]: each choice's index scaled by (candidates - 1)."""
        out = []
        for gene, v in zip(self._genes(), self._to_genome(self.validate(s))):
            n = len(gene.choices)
            out.append(gene.choices.index(v) / (n - 1) if n > 1 else 0.0)
        return out

    @property
    def encoding_size(self) -> int:
        """Length of :meth:`encode`'s vector."""
        return len(self.genes)

    def to_dict(self, s: Subnet) -> dict[str, Any]:
        """JSON-ready dict of a subnet of this space (validated)."""
        return self.validate(s).to_dict()

    def from_dict(self, d: dict[str, Any]) -> Subnet:
        """Subnet from its dict form, validated against this space."""
        try:
            s = Subnet.from_dict(d)
        except _WrongTypeError as e:  # name this space's candidates where the path is one of its choices
            choices = {gene.path: gene.choices for gene in self._genes()}.get(e.path)
            if choices is None:
                raise
            raise InvalidSubnetError(f"subnet.{e.path}={e.value!r} is not allowed; allowed values: "
                                     f"{list(choices)}") from e
        return self.validate(s)

    # ---------------------------------------------------------- persistence
    def to_config(self) -> dict[str, Any]:
        """JSON-ready description of the space itself (stored in checkpoints)."""
        def lists(grid: ChoiceGrid | None) -> Any:
            return None if grid is None else [[list(c) for c in row] for row in grid]

        return {"widths": lists(self.widths), "kernels": lists(self.kernels),
                "depths": lists(self.depths), "expands": lists(self.expands),
                "resolutions": list(self.resolutions), "elastic_exits": self.elastic_exits}

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "SearchSpace":
        """Inverse of :meth:`to_config`."""
        def tuples(grid: Any) -> ChoiceGrid | None:
            return None if grid is None else tuple(tuple(tuple(int(x) for x in c) for c in row) for row in grid)

        return cls(widths=tuples(d["widths"]), kernels=tuples(d["kernels"]), depths=tuples(d["depths"]),
                   expands=tuples(d["expands"]), resolutions=tuple(int(r) for r in d["resolutions"]),
                   elastic_exits=bool(d["elastic_exits"]))
