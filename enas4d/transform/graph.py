"""S2DNAS for any static CNN: a multi-stage supernet built from the graph of a torchvision/timm model.

:func:`graph_from_static` records the model's graph at its input size (:mod:`graph_trace`), reads
its body, head and channel spaces (:mod:`graph_spaces`) and rebuilds it as a :class:`GraphSupernet`
with the interface of :class:`MultiStageSupernet` (``space``, ``set_subnet``, ``active``, ``macs``,
``stage_macs``, ``extract``, ``forward`` -> one logits tensor per enabled exit), so training, search
and export use it unchanged. Nothing here knows a model family; it reads the graph:

- **body and head.** The head is the chain of single-input ops (global pooling or flatten, then
  linear / 1x1 conv / activation / dropout) that ends at the output, cut at its first global pooling
  or flatten; everything before it is the body, made of 4-D feature maps.
- **channel spaces.** Every dense convolution starts a channel space; depthwise convolutions,
  BatchNorm, activations, pooling and dropout keep their input's; a residual add (or a product
  with a per-channel gate) ties the spaces of its operands into one, so they share one split; a
  channel concatenation makes a composite space whose slice k is the concatenation of its parts'
  slices k. The image is *shared*: every stage reads all of it.
- **split and concat** (design.md section 3). Every space of C channels is cut into K slices (the
  first ones one wider when K does not divide C); a dense convolution's output slice k reads the
  input slices <= k (its weight is block-lower-triangular over slices); per-channel ops act per
  slice. Exit k's head reads slices 1..k of the body's last feature map: the static head, with its
  first layer cut to the columns of those channels; the last exit's head is the static head.
- **elastic widths.** Spaces are grouped by the resolution they are produced at (a "group" in
  :class:`Subnet`). ``width[k][g]`` is a *percentage*: slice k of every space in group g keeps
  ``max(1, round(width/100 * its maximum))`` channels (a prefix of the slice, importance-sorted
  when ``sort``). Kernels, depths and resolution have one candidate each.

With K = 1 and full widths the supernet computes exactly the static model (up to the order of
float sums when channels are sorted); with K > 1 every weight block is the static weight's block.
MACs are analytic per stage (convolutions and the heads' linear layers, from the recorded output
sizes); :meth:`GraphSupernet.extract` gives the standalone stages (:mod:`graph_static` ops in
:class:`~enas4d.models.static.StaticStage`), stage k computing only its own slices from the taps
earlier stages left, so the export path is the registered families'.

Not handled (each a one-line :class:`TransformError` naming the layer): grouped convolutions other
than depthwise, ops that mix channels other than convolutions (e.g. a channel-wise mean, a
transpose), reshapes other than a flatten before the classifier, layers called twice, several
outputs. Every stage reads all earlier slices (the paper's concat indicators are not searched).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enas4d.models import static as st
from enas4d.models.supernet import ActiveSubnet, MultiStageSupernet
from enas4d.nn.layers import MSBatchNorm2d, offsets
from enas4d.space import Subnet
from enas4d.transform import graph_static as gs
from enas4d.transform import s2dnas
from enas4d.transform.graph_spaces import SHARED, UNARY, GraphStructure, dense
from enas4d.transform.graph_trace import Node, record_graph
from enas4d.transform.s2dnas import TransformError

__all__ = ["GraphSpec", "GraphSupernet", "build_graph_supernet", "from_static", "graph_from_static"]

# ------------------------------------------------------------------------------ modules
def _fn_module(n: Node, deploy: bool = False) -> nn.Module:
    """The parameter-free module of a per-element / per-channel node (dropout is Identity when ``deploy``)."""
    a = n.attrs
    if n.op == "act":
        acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
                "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "mish": nn.Mish}
        if a["act"] in acts:
            return acts[a["act"]]()
        if a["act"] == "hardtanh":
            return nn.Hardtanh(float(a["min_val"]), float(a["max_val"]))
        if a["act"] == "gelu":
            return nn.GELU(approximate=a["approximate"])
        if a["act"] == "leaky_relu":
            return nn.LeakyReLU(float(a["negative_slope"]))
        return nn.ELU(float(a["alpha"]))
    if n.op == "scalar":
        return gs.ScalarOp(a["fn"], a["value"])
    if n.op == "pool":
        stride = a["stride"] if a["stride"] not in (None, [], ()) else None
        if a["kind"] == "max":
            return nn.MaxPool2d(a["kernel_size"], stride, a["padding"], a["dilation"], ceil_mode=a["ceil_mode"])
        return nn.AvgPool2d(a["kernel_size"], stride, a["padding"], a["ceil_mode"], a["count_include_pad"],
                            a["divisor_override"])
    if n.op == "apool":
        return nn.AdaptiveAvgPool2d(a["size"]) if a["kind"] == "avg" else nn.AdaptiveMaxPool2d(a["size"])
    if n.op == "gap":
        return gs.GlobalPool(a["kind"], a["keepdim"])
    if n.op == "flatten":
        return nn.Flatten(1)
    if n.op == "dropout" and not deploy:
        return nn.Dropout(a["p"])
    return nn.Identity()


def _key(name: str, taken: Any) -> str:
    key = name.replace(".", "_") or "root"
    if key in taken:
        raise TransformError(f"from_static: layer {name!r} is called more than once (shared weights); "
                             "not supported")
    return key


class GraphConv(nn.Module):
    """A conv of the body with its weight in max-layout order (rows and, if dense, columns by slice)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, attrs: dict[str, Any], depthwise: bool,
                 out_chs: Sequence[int], in_chs: Sequence[int]):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.stride, self.padding, self.dilation = attrs["stride"], attrs["padding"], attrs["dilation"]
        self.depthwise = depthwise
        self.out_chs, self.in_chs = tuple(out_chs), tuple(in_chs)  # max slice widths (one entry: shared input)

    def forward(self, x: Tensor, out_idx: Tensor | None, in_idx: Tensor | None, mask: Tensor | None) -> Tensor:
        """Fused conv of all active slices: x (N, active in, H, W) -> (N, active out, H', W')."""
        w, b = self.weight, self.bias
        if out_idx is not None:
            w = w.index_select(0, out_idx)
            b = None if b is None else b.index_select(0, out_idx)
        if in_idx is not None:
            w = w.index_select(1, in_idx)
        if mask is not None:
            w = w * mask
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, w.shape[0] if self.depthwise else 1)

    def stage_conv(self, rows: list[int], cols: list[int] | None) -> nn.Conv2d:
        """The real conv of one slice: output ``rows``, input ``cols`` (None: all / depthwise)."""
        w = self.weight.detach()[rows]
        if cols is not None:
            w = w[:, cols]
        groups = len(rows) if self.depthwise else 1
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), self.stride, self.padding,
                         self.dilation, groups, bias=self.bias is not None)
        conv.weight.data.copy_(w)
        if self.bias is not None:
            conv.bias.data.copy_(self.bias.detach()[rows])
        return conv


class GraphHead(nn.Module):
    """Exit head k: the static head with its first layer reading max-layout channels < ``n_cols`` only."""

    def __init__(self, chain: list[Node], tensors: dict[str, Tensor], perm: list[int], mult: int, n_cols: int):
        super().__init__()
        self.mult = mult
        self.steps: list[tuple[bool, int]] = []  # (a linear/conv layer?, its index)
        self.layers, self.fns = nn.ModuleList(), nn.ModuleList()
        for n in chain:
            if n.op not in ("linear", "conv"):
                self.steps.append((False, len(self.fns)))
                self.fns.append(_fn_module(n))
                continue
            w = tensors[n.params["weight"]].detach()
            b = tensors[n.params["bias"]].detach() if "bias" in n.params else None
            if not self.layers:  # columns of max positions 0..n_cols-1 (slices <= k), mult columns each
                w = w[:, [perm[p] * mult + j for p in range(n_cols) for j in range(mult)]]
            layer: nn.Module
            if n.op == "linear":
                layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            else:
                layer = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=b is not None)
            layer.weight.data.copy_(w)
            if b is not None:
                layer.bias.data.copy_(b)
            self.steps.append((True, len(self.layers)))
            self.layers.append(layer)

    def forward(self, x: Tensor, cols: Tensor | None) -> Tensor:
        """x: the active channels of slices <= k (N, C, H, W) -> (N, classes); ``cols``: the first
        layer's columns (None: all)."""
        for is_layer, j in self.steps:
            if not is_layer:
                x = self.fns[j](x)
                continue
            layer = self.layers[j]
            w = layer.weight if j > 0 or cols is None else layer.weight.index_select(1, cols)
            x = F.linear(x, w, layer.bias) if isinstance(layer, nn.Linear) else F.conv2d(x, w, layer.bias)
        return x

    def macs(self, n_in: int) -> int:
        """Analytic MACs per image when ``n_in`` body channels are read."""
        total, feat = 0, n_in * self.mult
        for layer in self.layers:
            total += layer.weight.shape[0] * feat
            feat = layer.weight.shape[0]
        return total

    def extract(self, cols: list[int]) -> nn.Sequential:
        """Plain modules of real shapes (dropout off) for first-layer columns ``cols``."""
        mods: list[nn.Module] = []
        for is_layer, j in self.steps:
            if not is_layer:
                fn = self.fns[j]
                mods.append(nn.Identity() if isinstance(fn, nn.Dropout) else copy.deepcopy(fn))
                continue
            layer = self.layers[j]
            w = layer.weight.detach() if j > 0 else layer.weight.detach()[:, cols]
            new: nn.Module
            if isinstance(layer, nn.Linear):
                new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
            else:
                new = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=layer.bias is not None)
            new.weight.data.copy_(w)
            if layer.bias is not None:
                new.bias.data.copy_(layer.bias.detach())
            mods.append(new)
        return nn.Sequential(*mods)


@dataclass(frozen=True)
class GraphSpec:
    """How a graph supernet was made; stored in checkpoints (``supernet.spec``) to rebuild it."""

    source: str | None  # "torchvision:NAME" / "timm:NAME" (None: a model given in code, not rebuildable)
    width_mults: tuple[float, ...]  # width candidates of every slice, as fractions of its maximum
    resolution: int  # input side the graph was recorded at and the model runs at
    sort: bool  # channels were ordered by importance before the split

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``kind: graph`` tells it from a NetSpec."""
        return {"kind": "graph", "source": self.source, "width_mults": list(self.width_mults),
                "resolution": self.resolution, "sort": self.sort}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(d["source"], tuple(float(m) for m in d["width_mults"]), int(d["resolution"]), bool(d["sort"]))


@dataclass
class _Plan:
    """Index and mask tensors of the active subnet (built by set_subnet, read by forward)."""

    subnet: Subnet
    conv: dict[int, tuple[Tensor | None, Tensor | None, Tensor | None]]  # node -> out_idx, in_idx, mask
    bn: dict[int, Tensor | None]  # node -> active channels
    cat: dict[int, Tensor | None]  # node -> reorder of the concatenated compact inputs into slice order
    heads: list[tuple[int, Tensor | None]]  # exit -> (channels read, first-layer columns)


@dataclass
class _Op:
    """One tap op of an extracted stage: the nodes it computes (a first node, then fused per-channel ones)."""

    nodes: list[int]
    shared: bool  # computes a shared value (stage 1 computes it whole, later stages hand it on)
    keep: bool  # its value is a tap later stages extend (read whole by a dense conv or the heads)


class GraphSupernet(ActiveSubnet):
    """A static CNN split into K stages from its graph (module docstring); MultiStageSupernet's interface.

    Args:
        model: the static network (its weights are copied; it is not kept).
        num_stages: K.
        spec: source name, width candidates, resolution, importance sorting.
        name: kept in checkpoints.
        in_chans: input channels (default: the first conv's).
        init_weights: copy (and sort) the static weights; False skips sorting when a state dict follows.
    """

    def __init__(self, model: nn.Module, num_stages: int, spec: GraphSpec, name: str,
                 in_chans: int | None = None, init_weights: bool = True):
        super().__init__()
        self._plan: _Plan | None = None
        if not 1 <= num_stages <= 6:
            raise TransformError(f"num_stages={num_stages} not allowed; allowed: 1..6")
        if in_chans is None:
            in_chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
        self.spec, self.num_stages, self.in_chans, self.name = spec, num_stages, in_chans, name
        self.resolution = spec.resolution
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        graph = record_graph(model, torch.zeros(1, in_chans, spec.resolution, spec.resolution, dtype=dtype))
        lay = self._lay = GraphStructure(graph, num_stages)
        self.num_classes = lay.num_classes
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        if spec.sort and init_weights:
            lay.sort_by_importance(tensors)
        self.convs, self.bns, self.fns = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self._mod: dict[int, str] = {}  # node -> key in convs / bns / fns
        for i in lay.body[1:]:
            n = lay.nodes[i]
            s = lay.space_of[i]
            rows = lay.perm(s) if s != SHARED else list(range(n.shape[1]))
            if n.op == "conv":
                key = self._mod[i] = _key(n.params["weight"].rpartition(".")[0], self.convs)
                si = lay.space_of[n.inputs[0]]
                w = tensors[n.params["weight"]].detach()[rows]
                depthwise = n.attrs["groups"] > 1
                if not depthwise and si != SHARED:
                    w = w[:, lay.perm(si)]
                b = tensors[n.params["bias"]].detach()[rows] if "bias" in n.params else None
                in_chs = lay.max_widths(si) if si != SHARED else [n.attrs["in_ch"]]
                self.convs[key] = GraphConv(w, b, n.attrs, depthwise, lay.max_widths(s) if s != SHARED else
                                            [n.shape[1]], in_chs)
            elif n.op == "bn":
                key = self._mod[i] = _key(n.params["running_mean"].rpartition(".")[0], self.bns)
                bn = MSBatchNorm2d(lay.max_widths(s) if s != SHARED else [n.shape[1]], n.attrs["eps"])
                with torch.no_grad():
                    for role in ("weight", "bias", "running_mean", "running_var"):
                        if role in n.params:
                            getattr(bn, role).copy_(tensors[n.params[role]].detach()[rows])
                self.bns[key] = bn
            elif n.op in UNARY:
                key = self._mod[i] = str(i)
                self.fns[key] = _fn_module(n)
        # Head k reads max positions 0..P_k-1: slices <= k are a prefix of the slice-ordered layout.
        sT = lay.space_of[lay.out]
        reach = [sum(lay.max_widths(sT)[:k + 1]) for k in range(num_stages)]
        self.heads = nn.ModuleList(GraphHead(lay.head, tensors, lay.perm(sT), lay.mult, reach[k])
                                   for k in range(num_stages))
        last_use: dict[int, int] = {}
        for i in lay.body:
            for j in lay.nodes[i].inputs:
                last_use[j] = i
        self._free = {i: [j for j in dict.fromkeys(lay.nodes[i].inputs) if last_use[j] == i and j != lay.out]
                      for i in lay.body}
        self._ops = self._tap_ops()
        self.space = lay.search_space(spec.width_mults, spec.resolution)
        self.to(dtype)  # the static model's (new BatchNorm and head layers are float32)
        self.set_subnet(self.space.largest())

    # ------------------------------------------------------------ active state
    def _active(self, s: Subnet) -> Any:
        memo: dict[int, list[list[int]]] = {}
        return lambda sp: self._lay.active(sp, s.width, memo)

    def set_subnet(self, s: Subnet, stages: int | None = None) -> None:
        """Make ``s`` the active subnet (validates it); the only writer of active state. ``stages``
        (MultiStageSupernet's leading-stages limit) is not available here: None only."""
        if stages is not None:
            raise ValueError(f"stages={stages} not allowed for a graph-transformed supernet; allowed: None")
        self.space.validate(s)
        lay, A = self._lay, self._active(s)
        dev = next(self.parameters()).device

        def idx(pos: list[int], total: int) -> Tensor | None:
            return None if pos == list(range(total)) else torch.tensor(pos, dtype=torch.long, device=dev)

        def flat(sp: int) -> tuple[list[int], list[int]]:
            a = A(sp)
            return [p for sl in a for p in sl], [k for k, sl in enumerate(a) for _ in sl]

        conv, bns, cat = {}, {}, {}
        for i in lay.body[1:]:
            n, s_ = lay.nodes[i], lay.space_of[i]
            if n.op == "conv":  # its output is never shared: a dense conv starts a space, a depthwise reads one
                si = lay.space_of[n.inputs[0]]
                out_pos, out_sid = flat(s_)
                total = lay.spaces[s_].channels
                if n.attrs["groups"] > 1 or si == SHARED:
                    conv[i] = (idx(out_pos, total), None, None)
                    continue
                in_pos, in_sid = flat(si)
                mask = torch.tensor(out_sid)[:, None] >= torch.tensor(in_sid)[None, :]
                dtype = self.convs[self._mod[i]].weight.dtype
                m = None if bool(mask.all()) else mask[:, :, None, None].to(dev, dtype)  # (O, I, 1, 1)
                conv[i] = (idx(out_pos, total), idx(in_pos, lay.spaces[si].channels), m)
            elif n.op == "bn":
                bns[i] = None if s_ == SHARED else idx(flat(s_)[0], lay.spaces[s_].channels)
            elif n.op == "cat":
                parts = [lay.space_of[j] for j in n.inputs]
                acts = [A(p) for p in parts]
                base = offsets([sum(len(sl) for sl in a) for a in acts])
                perm = []
                for k in range(self.num_stages):
                    for b0, a in zip(base, acts):
                        start = b0 + sum(len(a[q]) for q in range(k))
                        perm += range(start, start + len(a[k]))
                cat[i] = idx(perm, len(perm))
        heads = []
        a_out = A(lay.space_of[lay.out])
        for k, head in enumerate(self.heads):
            pos = [p for sl in a_out[:k + 1] for p in sl]
            cols = [p * lay.mult + j for p in pos for j in range(lay.mult)]
            heads.append((len(pos), idx(cols, head.layers[0].weight.shape[1])))
        self._plan = _Plan(s, conv, bns, cat, heads)

    # ----------------------------------------------------------------- forward
    check_input = MultiStageSupernet.check_input

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> logits of every enabled exit of the active subnet, each (N, classes)."""
        self.check_input(x)
        p, lay = self._plan, self._lay
        r = p.subnet.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        vals: dict[int, Tensor] = {0: x}
        for i in lay.body[1:]:
            n = lay.nodes[i]
            a = vals[n.inputs[0]]
            if n.op == "conv":
                y = self.convs[self._mod[i]](a, *p.conv[i])
            elif n.op == "bn":
                y = self.bns[self._mod[i]](a, p.bn[i])
            elif n.op in UNARY:
                y = self.fns[self._mod[i]](a)
            elif n.op == "add":
                y = a + vals[n.inputs[1]]
            elif n.op == "mul":
                y = a * vals[n.inputs[1]]
            else:  # cat
                y = torch.cat([vals[j] for j in n.inputs], 1)
                if p.cat[i] is not None:
                    y = y.index_select(1, p.cat[i])
            vals[i] = y
            for j in self._free[i]:
                del vals[j]
        feat = vals[lay.out]
        # Exit k reads slices 1..k: a prefix of the slice-ordered compact layout.
        return [head(feat[:, :n_in], cols)
                for head, (n_in, cols), on in zip(self.heads, p.heads, p.subnet.exits) if on]

    # -------------------------------------------------------------------- MACs
    def stage_macs(self, s: Subnet) -> tuple[list[int], list[int]]:
        """Per-image MACs of each stage's body increment and of each exit head (all K)."""
        self.space.validate(s)
        lay, A, K = self._lay, self._active(s), self.num_stages
        body = [0] * K
        for i in lay.body[1:]:
            n = lay.nodes[i]
            if n.op != "conv":
                continue
            per_out = n.attrs["kernel"][0] * n.attrs["kernel"][1] * n.shape[2] * n.shape[3]
            s_, si = lay.space_of[i], lay.space_of[n.inputs[0]]
            a_out = [len(sl) for sl in A(s_)]
            for k in range(K):
                if n.attrs["groups"] > 1:
                    fan_in = 1
                elif si == SHARED:
                    fan_in = n.attrs["in_ch"]
                else:
                    fan_in = sum(len(sl) for sl in A(si)[:k + 1])
                body[k] += a_out[k] * fan_in * per_out
        a_last = [len(sl) for sl in A(lay.space_of[lay.out])]
        heads = [head.macs(sum(a_last[:k + 1])) for k, head in enumerate(self.heads)]
        return body, heads

    macs = MultiStageSupernet.macs

    # ----------------------------------------------------------------- extract
    def _tap_ops(self) -> list[_Op]:
        """Ops of every extracted stage (the same list each stage): per-channel nodes fuse into the op
        before them unless that op's value is read elsewhere."""
        lay = self._lay
        keep = {i: i == lay.out or any(dense(lay.nodes[c]) for c in lay.consumers[i]) for i in lay.body}
        ops: list[_Op] = []
        end: dict[int, int] = {}  # node an op ends at -> op index
        for i in lay.body[1:]:
            n = lay.nodes[i]
            p = n.inputs[0]
            per_channel = n.op in UNARY or (n.op == "conv" and not dense(n))
            if per_channel and p in end and len(lay.consumers[p]) == 1 and not keep[p]:
                j = end.pop(p)
                ops[j].nodes.append(i)
                ops[j].keep = keep[i]
                end[i] = j
                continue
            end[i] = len(ops)
            ops.append(_Op([i], lay.space_of[i] == SHARED, keep[i]))
        self._pos = {op.nodes[-1]: j for j, op in enumerate(ops)}  # node -> its value's place in a stage
        return ops

    def _stage_modules(self, nodes: list[int], k: int, A: Any) -> nn.Module:
        """Real-shaped modules of ``nodes`` for stage k (conv-BN-act triples as foldable ConvBNAct)."""
        lay = self._lay
        mods: list[nn.Module] = []
        for i in nodes:
            n, s_ = lay.nodes[i], lay.space_of[i]
            rows = A(s_)[k] if s_ != SHARED else list(range(n.shape[1]))
            if n.op == "conv":
                si = lay.space_of[n.inputs[0]]
                cols = None if n.attrs["groups"] > 1 or si == SHARED else [q for sl in A(si)[:k + 1] for q in sl]
                mods.append(self.convs[self._mod[i]].stage_conv(rows, cols))
            elif n.op == "bn":
                src = self.bns[self._mod[i]]
                bn = nn.BatchNorm2d(len(rows), eps=src.eps)
                with torch.no_grad():
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, name).copy_(getattr(src, name)[rows])
                mods.append(bn)
            else:
                mods.append(_fn_module(n, deploy=True))
        out: list[nn.Module] = []
        j = 0
        while j < len(mods):  # conv -> BN [-> act] as one ConvBNAct, so export can fold the BN
            if isinstance(mods[j], nn.Conv2d) and j + 1 < len(mods) and isinstance(mods[j + 1], nn.BatchNorm2d):
                act = mods[j + 2] if j + 2 < len(mods) and lay.nodes[nodes[j + 2]].op == "act" else nn.Identity()
                out.append(st.ConvBNAct(mods[j], mods[j + 1], act))
                j += 2 if isinstance(act, nn.Identity) else 3
            else:
                out.append(mods[j])
                j += 1
        return out[0] if len(out) == 1 else nn.Sequential(*out)

    def extract(self, s: Subnet) -> st.StaticMultiStageNet:
        """A standalone network of real shapes computing subnet ``s`` (eval-mode statistics): stage k
        computes only its own slices, reading the taps earlier stages left (no recomputation)."""
        self.space.validate(s)
        self.check_bn(s, action="extract")
        lay, A = self._lay, self._active(s)
        a_out = A(lay.space_of[lay.out])

        def src(p: int) -> int:
            return -1 if p == 0 else self._pos[p]

        def own(p: int, k: int) -> tuple[int, int]:  # (position, width of the own slice if p is a tap)
            sp = lay.space_of[p]
            if sp == SHARED or not self._ops[self._pos[p]].keep:
                return src(p), 0
            return src(p), len(A(sp)[k])

        stages = []
        for k in range(self.num_stages):
            ops: list[nn.Module] = []
            for j, op in enumerate(self._ops):
                if op.shared and k > 0:  # stage 1 computed it whole
                    ops.append(st.KeepOp(j))
                    continue
                prev_pos = j if op.keep and k > 0 else -1
                first = lay.nodes[op.nodes[0]]
                if first.op in ("add", "mul"):
                    (a, aw), (b, bw) = own(first.inputs[0], k), own(first.inputs[1], k)
                    post = self._stage_modules(op.nodes[1:], k, A) if len(op.nodes) > 1 else nn.Identity()
                    ops.append(gs.BinaryOp(a, aw, b, bw, first.op == "mul", post, prev_pos))
                elif first.op == "cat":
                    srcs = [own(q, k) for q in first.inputs]
                    post = self._stage_modules(op.nodes[1:], k, A) if len(op.nodes) > 1 else nn.Identity()
                    ops.append(gs.CatOp([q for q, _ in srcs], [w for _, w in srcs], post, prev_pos))
                else:
                    p = first.inputs[0]
                    q, w = (src(p), 0) if dense(first) or lay.space_of[p] == SHARED else own(p, k)
                    ops.append(gs.ChainOp(self._stage_modules(op.nodes, k, A), q, w, prev_pos))
            if s.exits[k]:
                pos = [p for sl in a_out[:k + 1] for p in sl]
                head: nn.Module = self.heads[k].extract([p * lay.mult + t for p in pos for t in range(lay.mult)])
            else:
                head = st.NoHead()
            stages.append(st.StaticStage(ops, head, bool(s.exits[k])))
        return st.StaticMultiStageNet(stages, s.resolution, self.in_chans).eval()


# ------------------------------------------------------------------------------ entry points
def graph_from_static(model: nn.Module, num_stages: int = 3, *, width_mults: Sequence[float] | None = None,
                      resolution: int = 224, sort: bool = True, name: str | None = None,
                      source: str | None = None, in_chans: int | None = None) -> GraphSupernet:
    """A K-stage :class:`GraphSupernet` initialised from the static ``model`` (see the module docstring).

    Args:
        model: a static CNN (torchvision, timm or any of the same kinds of layers), with its weights.
        num_stages: K, the stages (exits) of the result; each channel space needs at least K channels.
        width_mults: width candidates of every slice as fractions of its maximum (None: 1.0 only).
        resolution: input side the network runs at (the graph is recorded there; inputs are resized to it).
        sort: order channels by importance (BatchNorm-folded L1 norm) before splitting.
        name: kept in checkpoints; default ``"<source or class name>-s2dnas"``.
        source: where the model came from (``torchvision:NAME`` / ``timm:NAME``), so a checkpoint
            can rebuild it; None for a model built in code.
        in_chans: input channels (default: the first conv's).
    """
    spec = GraphSpec(source, tuple(float(m) for m in (width_mults or (1.0,))), int(resolution), bool(sort))
    return GraphSupernet(model, num_stages, spec, name or f"{source or type(model).__name__}-s2dnas", in_chans)


def build_graph_supernet(sn: dict[str, Any]) -> GraphSupernet:
    """The (untrained) graph supernet a checkpoint's ``supernet`` entry describes, rebuilt from its source."""
    from enas4d.checkpoint import CheckpointError
    from enas4d.transform.sources import build_source_model

    spec = GraphSpec.from_dict(sn["spec"])
    if spec.source is None:
        raise CheckpointError(f"ckpt: supernet {sn['name']!r} was transformed from a model built in code (no "
                              "source), so it cannot be rebuilt from the checkpoint")
    try:
        model = build_source_model(spec.source, sn["num_classes"], sn["in_chans"])
        return GraphSupernet(model, sn["num_stages"], spec, sn["name"], sn["in_chans"], init_weights=False)
    except TransformError as e:
        raise CheckpointError(f"ckpt: cannot rebuild supernet {sn['name']!r}: {e}") from e


def from_static(static: nn.Module, num_stages: int = 3, *, width_mults: Sequence[float] | None = None,
                kernels: Sequence[int] | None = None, depths: Sequence[int] | None = None,
                resolutions: Sequence[int] | None = None, sort: bool = True, name: str | None = None,
                source: str | None = None, grow: Sequence[float] | None = None,
                fixed_static: bool = False) -> nn.Module:
    """A K-stage supernet from a static network: a K = 1 enas4d network by its NetSpec
    (:func:`enas4d.transform.s2dnas.from_static`, which can also ``grow`` new stages in front of
    it), any other CNN from its graph (:func:`graph_from_static`; ``resolutions`` one side, default
    224; ``kernels``, ``depths``, ``grow`` and ``fixed_static`` are not available there)."""
    if isinstance(static, MultiStageSupernet):
        return s2dnas.from_static(static, num_stages, width_mults=width_mults, kernels=kernels, depths=depths,
                                  resolutions=resolutions, sort=sort, grow=grow, fixed_static=fixed_static,
                                  name=name)
    for key, value in (("kernels", kernels), ("depths", depths), ("grow", grow)):
        if value is not None:
            raise TransformError(f"from_static: {key}={list(value)} not allowed for a {type(static).__name__}: "
                                 "graph-transformed networks have elastic widths only; allowed: None")
    if resolutions is not None and len(resolutions) != 1:
        raise TransformError(f"from_static: resolutions={list(resolutions)} not allowed for a "
                             f"{type(static).__name__}: a graph-transformed network runs at one resolution")
    return graph_from_static(static, num_stages, width_mults=width_mults,
                             resolution=int(resolutions[0]) if resolutions else 224, sort=sort, name=name,
                             source=source)
