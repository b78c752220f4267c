"""A supernet family as data: :class:`NetSpec` (groups, candidates, slice layout), the search
space it defines for K stages, and the per-exit cost rule every part of enas4d shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from enas4d.space import SearchSpace

__all__ = ["GroupSpec", "IDEMPOTENT_ACTS", "NetSpec", "exit_costs", "slice_widths", "space_from_spec", "split_width"]


@dataclass(frozen=True)
class GroupSpec:
    """One group: blocks at one spatial resolution."""

    width: int  # channels of the largest subnet, summed over slices
    depth: int  # maximum number of blocks
    stride: int  # stride of the group's first block
    act: str = "relu"  # activation inside the blocks


@dataclass(frozen=True)
class NetSpec:
    """A supernet family as data (pycls/timm-byobnet style): everything the space derives from."""

    block: str  # "mb" (inverted residual) or "basic" (ResNet basic block)
    groups: tuple[GroupSpec, ...]
    stem_stride: int  # stride of the 3x3 stem conv; its width is group 0's width (same gene)
    stem_act: str  # activation after the stem
    width_mults: tuple[float, ...]  # width candidates of a slice, as fractions of its maximum
    kernels: tuple[int, ...]  # kernel candidates (depthwise for "mb", dense for "basic")
    depths: tuple[int, ...]  # depth candidates, clipped to each group's maximum
    expands: tuple[int, ...] | None  # expand-ratio candidates ("mb" only)
    resolutions: tuple[int, ...]  # input side candidates
    head_conv: int | None = None  # 1x1 conv channels of every exit head before pooling
    head_hidden: int | None = None  # hidden linear layer of every exit head after pooling
    head_act: str = "relu"  # activation inside the heads
    # Per stage k (K entries, or None): relative maximum width of slice k (None: equal slices) and
    # the first earlier slice stage k reads (it reads slices reads_from[k]..k; None: all of them).
    slice_fracs: tuple[float, ...] | None = None
    reads_from: tuple[int, ...] | None = None
    # The last stage is one fixed network (a grown S2DNAS supernet's static stage, kept frozen): one
    # candidate per choice, its maximum width and depth, the smallest kernel and the largest expand ratio.
    fixed_last: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in checkpoints, so a transformed supernet can be rebuilt)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetSpec":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["groups"] = tuple(GroupSpec(**g) for g in d["groups"])
        for key in ("width_mults", "kernels", "depths", "expands", "resolutions", "slice_fracs", "reads_from"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def exit_costs(body: Sequence[int], heads: Sequence[int], exits: Sequence[bool]) -> list[int]:
    """Cumulative cost per image of leaving at each stage (design.md section 3), with only the heads
    of enabled ``exits`` computed; 0 at disabled stages (nobody leaves there). The one definition:
    the supernet, the search's calibration and the export all use it, for MACs or latencies."""
    out, acc = [], 0
    for b, h, on in zip(body, heads, exits):
        acc += int(b)
        if on:
            acc += int(h)
        out.append(acc if on else 0)
    return out


IDEMPOTENT_ACTS = ("relu", "none")  # act(act(x)) == act(x)


def split_width(total: int, k: int, fracs: Sequence[float] | None = None) -> tuple[int, ...]:
    """Split ``total`` channels into ``k`` slices: equal ones (the first ones one wider when it does
    not divide), or in proportion to ``fracs`` (largest remainders get the rounding)."""
    if total < k:
        raise ValueError(f"width {total} cannot be split into {k} slices")
    if fracs is None:
        base, rem = divmod(total, k)
        return tuple(base + (i < rem) for i in range(k))
    if len(fracs) != k or any(not f > 0 for f in fracs):
        raise ValueError(f"slice_fracs={list(fracs)} not allowed; allowed: {k} positive numbers")
    exact = [total * f / sum(fracs) for f in fracs]
    out = [max(1, int(e)) for e in exact]
    for i in sorted(range(k), key=lambda i: int(exact[i]) - exact[i])[:max(0, total - sum(out))]:
        out[i] += 1
    if sum(out) != total:
        raise ValueError(f"width {total} cannot be split into {k} slices in proportion {list(fracs)}")
    return tuple(out)


def slice_widths(spec: NetSpec, num_stages: int) -> list[tuple[int, ...]]:
    """Maximum width of every slice of every group: ``[g][k]``."""
    return [split_width(gs.width, num_stages, spec.slice_fracs) for gs in spec.groups]


def space_from_spec(spec: NetSpec, num_stages: int) -> SearchSpace:
    """The search space a NetSpec defines for K stages."""
    K, G = num_stages, len(spec.groups)
    maxw = slice_widths(spec, K)  # [g][k]
    widths = tuple(tuple(tuple(sorted({max(1, round(m * maxw[g][k])) for m in spec.width_mults}))
                         for g in range(G)) for k in range(K))
    kernels = tuple(tuple(tuple(spec.kernels) for _ in range(G)) for _ in range(K))
    depths = tuple(tuple(tuple(sorted({min(d, gs.depth) for d in spec.depths})) for gs in spec.groups)
                   for _ in range(K))
    expands = None
    if spec.expands is not None:
        expands = tuple(tuple(tuple(spec.expands) for _ in range(G)) for _ in range(K))
    if spec.fixed_last:
        widths = (*widths[:-1], tuple((maxw[g][-1],) for g in range(G)))
        kernels = (*kernels[:-1], tuple((min(spec.kernels),) for _ in range(G)))
        depths = (*depths[:-1], tuple((gs.depth,) for gs in spec.groups))
        if expands is not None:
            expands = (*expands[:-1], tuple((max(spec.expands),) for _ in range(G)))
    return SearchSpace(widths, kernels, depths, expands, tuple(spec.resolutions))
