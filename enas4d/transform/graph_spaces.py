"""What a static CNN's recorded graph says, for :mod:`enas4d.transform.graph`: where the body ends and
the classifier (the exit heads' template) begins, the channel spaces of the body (which tensors share
one split into slices), their groups (by resolution), and every slice's channels for a subnet.
No tensors are built here; :class:`~enas4d.transform.graph.GraphSupernet` builds the modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from enas4d.models.spec import split_width
from enas4d.nn.layers import offsets
from enas4d.space import SearchSpace
from enas4d.transform.graph_trace import SUPPORTED, Graph, Node
from enas4d.transform.s2dnas import TransformError

__all__ = ["SHARED", "UNARY", "GraphStructure", "dense", "width_of"]

SHARED = -1  # the space of the image and of what per-channel ops make of it: every stage reads all of it
UNARY = ("bn", "act", "scalar", "pool", "apool", "gap", "dropout", "identity")  # per channel, hence per slice
_HEAD_OPS = ("linear", "conv", "act", "scalar", "dropout", "identity", "flatten", "gap")


def _fail(node: Node, what: str) -> TransformError:
    return TransformError(f"from_static: {node.where}: cannot transform {what}; supported: {SUPPORTED}")


def width_of(pct: int, m: int) -> int:
    """Channels of a slice of maximum ``m`` at ``pct`` percent (at least one)."""
    return max(1, (pct * m + 50) // 100)


def dense(n: Node) -> bool:
    """Whether ``n`` is a dense convolution (it mixes channels, so it starts a space and reads whole taps)."""
    return n.op == "conv" and n.attrs["groups"] == 1


@dataclass
class _Space:
    """A channel space: made by a dense conv ("base") or a concatenation of spaces ("cat")."""

    kind: str
    channels: int
    first: int  # earliest node in the space; its resolution is the space's group
    parts: tuple[int, ...] = ()  # "cat": the spaces concatenated


class GraphStructure:
    """What the graph says: body nodes, head chain, channel spaces and their slices (no tensors)."""

    def __init__(self, graph: Graph, num_stages: int):
        self.nodes, self.K = graph.nodes, num_stages
        live = graph.live()
        for i in live:
            if self.nodes[i].op == "unsupported":
                a = self.nodes[i].attrs
                raise _fail(self.nodes[i], f"{a['reason']} ({a['func']})")
        cons, alive = graph.consumers(), set(live)
        self.consumers = {i: [c for c in cons[i] if c in alive] for i in live}
        self._split_head(graph)
        self._make_spaces()

    # ---------------------------------------------------------------- head
    def _head_op(self, n: Node) -> bool:
        if n.op not in _HEAD_OPS or len(n.inputs) != 1:
            return False
        if n.op == "conv":  # a 1x1 conv of a pooled (N, C, 1, 1) map is a linear layer
            a = n.attrs
            return (a["groups"] == 1 and a["kernel"] == (1, 1) and self.nodes[n.inputs[0]].shape[2:] == (1, 1)
                    and a["stride"] == (1, 1) and a["padding"] in ((0, 0), "valid"))
        return True

    def _split_head(self, graph: Graph) -> None:
        chain, i = [], graph.output
        while self._head_op(self.nodes[i]):
            chain.append(i)
            i = self.nodes[i].inputs[0]
            if len(self.consumers[i]) != 1:
                break
        chain.reverse()
        starts = [j for j, i in enumerate(chain) if self.nodes[i].op in ("gap", "flatten")]
        if not starts:
            raise TransformError(f"from_static: {self.nodes[graph.output].where}: found no global pooling or "
                                 "flatten followed only by linear layers, activations and dropout before the output; "
                                 "the exit heads are attached where the classifier reads")
        self.head = [self.nodes[i] for i in chain[starts[0]:]]
        self.out = self.head[0].inputs[0]  # the body's last feature map, which every exit reads
        if not any(n.op in ("linear", "conv") for n in self.head):
            raise _fail(self.head[-1], "a classifier without a linear layer")
        feat = self.nodes[self.out].shape
        self.mult = 1 if self.head[0].op == "gap" else feat[2] * feat[3]  # head columns per body channel
        first = next(n for n in self.head if n.op in ("linear", "conv"))
        fan_in = first.attrs["in_ch"] if first.op == "conv" else graph.nodes[first.inputs[0]].shape[1]
        if fan_in != feat[1] * self.mult:
            raise _fail(first, f"a classifier reading {fan_in} features of a {list(feat[1:])} feature map")
        self.num_classes = int(self.nodes[graph.output].shape[-1])
        if len(self.nodes[graph.output].shape) != 2:
            shape = list(self.nodes[graph.output].shape)
            raise _fail(self.nodes[graph.output], f"an output of shape {shape}, not (N, classes)")
        seen, todo = {self.out}, [self.out]
        while todo:
            for j in self.nodes[todo.pop()].inputs:
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        self.body = sorted(seen)
        if self.body[0] != 0:
            raise _fail(self.nodes[self.body[0]], "a network body that does not start at the input")

    # -------------------------------------------------------------- spaces
    def _make_spaces(self) -> None:
        self.spaces: list[_Space] = []
        self._parent: list[int] = []
        space_of: dict[int, int] = {}
        for i in self.body:
            n = self.nodes[i]
            if n.op == "input":
                space_of[i] = SHARED
                continue
            if len(n.shape) != 4:
                raise _fail(n, f"{n.op} giving a {len(n.shape)}-D tensor inside the network body (only the "
                               "classifier after the global pooling or flatten may)")
            ins = [self.find(space_of[j]) for j in n.inputs]
            if n.op == "conv":
                a = n.attrs
                if a["groups"] == 1:
                    space_of[i] = self._new(_Space("base", a["out_ch"], i))
                elif a["groups"] == a["in_ch"] == a["out_ch"]:
                    if ins[0] == SHARED:
                        raise _fail(n, "a depthwise convolution of the input image")
                    space_of[i] = ins[0]
                else:
                    raise _fail(n, f"a grouped convolution (groups={a['groups']}, "
                                   f"{a['in_ch']}->{a['out_ch']} channels)")
            elif n.op in UNARY:
                space_of[i] = ins[0]
            elif n.op in ("add", "mul"):
                shapes = [self.nodes[j].shape for j in n.inputs]
                if any(s[1] != n.shape[1] for s in shapes):
                    raise _fail(n, f"a {n.op} that broadcasts over channels ({[list(s) for s in shapes]})")
                a, b = ins
                if SHARED in (a, b):
                    if a != b:
                        raise _fail(n, f"a {n.op} of the input image and a feature map")
                    space_of[i] = SHARED
                elif a == b:
                    space_of[i] = a
                elif self.spaces[a].kind == "base" and self.spaces[b].kind == "base":
                    space_of[i] = self._union(a, b)
                elif "base" in (self.spaces[a].kind, self.spaces[b].kind):
                    base, cat = (a, b) if self.spaces[a].kind == "base" else (b, a)
                    if base in self._within(cat):
                        raise _fail(n, f"a {n.op} of a channel concatenation and one of its parts")
                    self._parent[base] = cat  # the base space (e.g. a gate) takes the concatenation's layout
                    space_of[i] = cat
                else:
                    raise _fail(n, f"a {n.op} of two different channel concatenations")
            elif n.op == "cat":
                if SHARED in ins:
                    raise _fail(n, "a concatenation with the input image")
                space_of[i] = self._new(_Space("cat", n.shape[1], i, tuple(ins)))
            else:
                raise _fail(n, f"{n.op} inside the network body (only in the classifier)")
        self.space_of = {i: self.find(s) for i, s in space_of.items()}
        for sp in self.spaces:
            sp.parts = tuple(self.find(p) for p in sp.parts)
        if self.space_of[self.out] == SHARED:
            raise _fail(self.nodes[self.out], "a network without a convolution before its classifier")
        self.roots = sorted({r for r in map(self.find, range(len(self.spaces))) if self.spaces[r].kind == "base"})
        narrow = min(self.roots, key=lambda r: self.spaces[r].channels)
        if self.spaces[narrow].channels < self.K:
            n = self.nodes[self.spaces[narrow].first]
            raise TransformError(f"num_stages={self.K} not allowed for this network: {n.where} has only "
                                 f"{self.spaces[narrow].channels} output channels and every stage needs one of each "
                                 f"layer's; allowed: 1..{min(6, self.spaces[narrow].channels)}")
        sizes = sorted({self.nodes[self.spaces[r].first].shape[2:] for r in self.roots},
                       key=lambda hw: (-hw[0] * hw[1], hw))  # the highest resolution is group 0
        self.group = {r: sizes.index(self.nodes[self.spaces[r].first].shape[2:]) for r in self.roots}
        self.num_groups = len(sizes)
        self.maxw = {r: split_width(self.spaces[r].channels, self.K) for r in self.roots}
        # max-layout position -> static channel, per base space (identity unless sorted by importance)
        self.order = {r: list(range(self.spaces[r].channels)) for r in self.roots}

    def _new(self, sp: _Space) -> int:
        self.spaces.append(sp)
        self._parent.append(len(self._parent))
        return len(self.spaces) - 1

    def _within(self, s: int) -> set[int]:
        """The spaces a concatenation is made of, at any depth."""
        out: set[int] = set()
        for p in self.spaces[s].parts:
            p = self.find(p)
            out |= {p} | (self._within(p) if self.spaces[p].kind == "cat" else set())
        return out

    def find(self, s: int) -> int:
        """Representative of space ``s`` (residual adds merge spaces)."""
        if s == SHARED:
            return s
        while self._parent[s] != s:
            s = self._parent[s]
        return s

    def _union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            keep, drop = (a, b) if self.spaces[a].first <= self.spaces[b].first else (b, a)
            self._parent[drop] = keep
            a = keep
        return a

    # -------------------------------------------------------------- layout
    def slices(self, s: int) -> list[list[int]]:
        """Static channel indices of every slice of space ``s``, in max-layout order."""
        if self.spaces[s].kind == "base":
            return [self.order[s][o:o + m] for o, m in zip(offsets(self.maxw[s]), self.maxw[s])]
        out: list[list[int]] = [[] for _ in range(self.K)]
        base = 0
        for p in self.spaces[s].parts:
            for k, sl in enumerate(self.slices(p)):
                out[k] += [base + c for c in sl]
            base += self.spaces[p].channels
        return out

    def perm(self, s: int) -> list[int]:
        """Max-layout position -> static channel of space ``s``."""
        return [c for sl in self.slices(s) for c in sl]

    def max_widths(self, s: int) -> list[int]:
        """Maximum width of every slice of ``s``."""
        return [len(sl) for sl in self.slices(s)]

    def active(self, s: int, width: Sequence[Sequence[int]], memo: dict[int, list[list[int]]]) -> list[list[int]]:
        """Max-layout positions of the active channels of every slice of ``s`` for ``width`` [k][g] (percent)."""
        if s in memo:
            return memo[s]
        mw = self.max_widths(s)
        if self.spaces[s].kind == "base":
            g = self.group[s]
            out = [list(range(o, o + width_of(width[k][g], m))) for k, (o, m) in enumerate(zip(offsets(mw), mw))]
        else:
            out = [[] for _ in range(self.K)]
            for k, off in enumerate(offsets(mw)):
                inner = off
                for p in self.spaces[s].parts:
                    pm, po = self.max_widths(p), offsets(self.max_widths(p))
                    out[k] += [inner + q - po[k] for q in self.active(p, width, memo)[k]]
                    inner += pm[k]
        memo[s] = out
        return out

    def sort_by_importance(self, tensors: dict[str, Tensor]) -> None:
        """Order every base space by the L1 norm of its producing convs' rows (BatchNorm scale folded in)."""
        imp = {r: torch.zeros(self.spaces[r].channels, dtype=torch.float64) for r in self.roots}
        for i in self.body:
            n = self.nodes[i]
            if not dense(n) or self.space_of[i] not in imp:  # a conv writing a concatenation's layout
                continue
            w = tensors[n.params["weight"]].detach().double()
            score = w.abs().flatten(1).sum(1)
            nxt = self.consumers[i]
            if len(nxt) == 1 and self.nodes[nxt[0]].op == "bn":
                bn = self.nodes[nxt[0]]
                var = tensors[bn.params["running_var"]].detach().double()
                gamma = tensors[bn.params["weight"]].detach().double().abs() if "weight" in bn.params else 1.0
                score = score * gamma / torch.sqrt(var + bn.attrs["eps"])
            imp[self.space_of[i]] += score
        for r in self.roots:
            self.order[r] = torch.argsort(imp[r], descending=True, stable=True).tolist()

    def search_space(self, width_mults: Sequence[float], resolution: int) -> SearchSpace:
        """Widths in percent per (stage, group), kept only where they give distinct widths; one
        candidate for everything else."""
        if not width_mults or any(not 0 < m <= 1 for m in width_mults):
            raise TransformError(f"width_mults={list(width_mults)} not allowed; allowed: fractions in (0, 1]")
        pcts = sorted({max(1, round(100 * m)) for m in width_mults})
        K, G = self.K, self.num_groups
        widths = []
        for k in range(K):
            row = []
            for g in range(G):
                by_widths: dict[tuple[int, ...], int] = {}
                for p in pcts:  # ascending: the largest percentage of equal widths wins
                    by_widths[tuple(width_of(p, self.maxw[r][k]) for r in self.roots if self.group[r] == g)] = p
                row.append(tuple(sorted(by_widths.values())))
            widths.append(tuple(row))
        kern = [1] * G
        for i in self.body:  # informative only: the largest kernel writing each group's spaces
            n, sp = self.nodes[i], self.space_of[i]
            if n.op == "conv" and sp in self.group:
                kern[self.group[sp]] = max(kern[self.group[sp]], max(n.attrs["kernel"]))
        kernels = tuple(tuple((kern[g],) for g in range(G)) for _ in range(K))
        depths = tuple(tuple((1,) for _ in range(G)) for _ in range(K))
        return SearchSpace(tuple(widths), kernels, depths, None, (resolution,))
