"""The graph of a static CNN, recorded op by op from one forward pass (for :mod:`enas4d.transform.graph`).

torch.fx's symbolic trace cannot follow control flow on tensor shapes (timm's VGG head pools its
input up to 7x7 when it is smaller, behind an ``if x.shape[-2] < 7``), so the graph is recorded
from a real forward pass at the input size the supernet will run at: a ``TorchFunctionMode`` sees
every torch function the modules call (``conv2d``, ``batch_norm``, ``relu``, ``add_``, ``cat``, ...)
with its real arguments. Tensors are followed by identity (an in-place op makes its tensor a new
node), parameters and buffers are known by their state-dict names, and forward hooks name the
module each call comes from, so an error can say which layer it cannot transform. The result is a
list of :class:`Node` in execution (hence topological) order; nothing about a particular model
family is assumed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from enas4d.transform.s2dnas import TransformError

__all__ = ["ACTIVATIONS", "Graph", "Node", "SUPPORTED", "record_graph"]

SUPPORTED = ("dense (groups=1) and depthwise (groups=channels) conv2d, batch_norm, elementwise activations "
             "(relu, relu6, hardtanh, silu, hardswish, hardsigmoid, sigmoid, tanh, gelu, leaky_relu, elu, mish), "
             "scalar add/sub/mul/div, residual adds, products with per-channel gates, channel concatenation, "
             "max/avg/adaptive pooling, global mean, flatten, linear and dropout")

T = torch.Tensor

# activation name -> (functions that compute it, argument names after the input, defaults)
ACTIVATIONS: dict[str, tuple[tuple[Callable, ...], tuple[str, ...], tuple[Any, ...]]] = {
    "relu": ((F.relu, torch.relu, T.relu, torch.relu_, T.relu_), ("inplace",), (False,)),
    "relu6": ((F.relu6,), ("inplace",), (False,)),
    "hardtanh": ((F.hardtanh,), ("min_val", "max_val", "inplace"), (-1.0, 1.0, False)),
    "silu": ((F.silu,), ("inplace",), (False,)),
    "hardswish": ((F.hardswish,), ("inplace",), (False,)),
    "hardsigmoid": ((F.hardsigmoid,), ("inplace",), (False,)),
    "sigmoid": ((torch.sigmoid, T.sigmoid, T.sigmoid_, F.sigmoid), (), ()),
    "tanh": ((torch.tanh, T.tanh, T.tanh_, F.tanh), (), ()),
    "gelu": ((F.gelu,), ("approximate",), ("none",)),
    "leaky_relu": ((F.leaky_relu,), ("negative_slope", "inplace"), (0.01, False)),
    "elu": ((F.elu,), ("alpha", "inplace"), (1.0, False)),
    "mish": ((F.mish,), ("inplace",), (False,)),
}

_BINARY = {  # op name -> functions (input, other[, alpha])
    "add": (torch.add, T.add, T.add_, T.__add__, T.__iadd__, T.__radd__),
    "mul": (torch.mul, T.mul, T.mul_, T.__mul__, T.__imul__, T.__rmul__),
    "sub": (torch.sub, T.sub, T.sub_, T.__sub__, T.__isub__),
    "div": (torch.div, T.div, T.div_, T.__truediv__, T.__itruediv__),
}


@dataclass
class Node:
    """One recorded op: its kind, the nodes it reads and what it needs to be rebuilt."""

    idx: int
    op: str  # input conv bn act scalar add mul cat pool apool gap flatten linear dropout identity unsupported
    inputs: tuple[int, ...]  # nodes read, in argument order
    shape: tuple[int, ...]  # output shape at batch 1
    where: str  # the calling module, e.g. "layer1.0.conv1 (Conv2d)", for error messages
    attrs: dict[str, Any] = field(default_factory=dict)  # op arguments (stride, eps, act name, ...)
    params: dict[str, str] = field(default_factory=dict)  # role ("weight", "running_mean", ...) -> state-dict key


@dataclass
class Graph:
    """Recorded nodes (node 0 is the input) and the node the model returns."""

    nodes: list[Node]
    output: int

    def consumers(self) -> dict[int, list[int]]:
        """node -> the nodes that read it (each once, in order)."""
        out: dict[int, list[int]] = {n.idx: [] for n in self.nodes}
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                out[i].append(n.idx)
        return out

    def live(self) -> list[int]:
        """Nodes the output depends on, in execution order."""
        seen, todo = {self.output}, [self.output]
        while todo:
            for i in self.nodes[todo.pop()].inputs:
                if i not in seen:
                    seen.add(i)
                    todo.append(i)
        return sorted(seen)


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: tuple[Any, ...]) -> dict[str, Any]:
    """Arguments by name: ``names`` (all), the last ``len(defaults)`` of them optional."""
    out = dict(zip(names[len(names) - len(defaults):], defaults))
    out.update(zip(names, args))
    out.update(kwargs)
    return out


class _Unsupported(Exception):
    """An op the transform cannot handle; recorded, and raised only if the output depends on it."""


class _Recorder(TorchFunctionMode):
    """Builds :class:`Node` s from the torch functions called during one forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names: dict[int, str] = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.names.setdefault(id(t), name)
        self.nodes: list[Node] = []
        self.ids: dict[int, int] = {}  # id(tensor) -> node; tensors are kept alive, so ids stay unique
        self.keep: list[Tensor] = []
        self.stack: list[str] = [f"the forward of {type(model).__name__}"]

    # ------------------------------------------------------------------ nodes
    def add(self, op: str, inputs: tuple[int, ...], out: Tensor, attrs: dict[str, Any] | None = None,
            params: dict[str, str] | None = None) -> None:
        """Append a node computing ``out``; ``out`` now stands for it (also after an in-place op)."""
        node = Node(len(self.nodes), op, inputs, tuple(out.shape), self.stack[-1], attrs or {}, params or {})
        self.nodes.append(node)
        self.ids[id(out)] = node.idx
        self.keep.append(out)

    def node(self, t: Any) -> int:
        """The node a tensor argument stands for (it must come from the input)."""
        if isinstance(t, Tensor) and id(t) in self.ids:
            return self.ids[id(t)]
        if isinstance(t, Tensor) and id(t) in self.names:
            raise _Unsupported(f"a parameter ({self.names[id(t)]}) used as a feature map")
        raise _Unsupported("a tensor computed without the input (a constant or a transformed weight)")

    def param(self, t: Any, role: str, optional: bool = False) -> dict[str, str]:
        """``{role: state-dict key}`` of a parameter/buffer argument ({} for an allowed None)."""
        if t is None and optional:
            return {}
        if isinstance(t, Tensor) and id(t) in self.names:
            return {role: self.names[id(t)]}
        raise _Unsupported(f"its {role} is computed at run time, not a parameter of the model")

    def tracked(self, t: Any) -> bool:
        """Whether ``t`` is a tensor that depends on the input."""
        return isinstance(t, Tensor) and id(t) in self.ids

    # --------------------------------------------------------------- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, Tensor):
            flat = list(args) + list(kwargs.values())
            flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
            if any(self.tracked(a) for a in flat):
                try:
                    self.translate(func, args, kwargs, out)
                except _Unsupported as e:
                    ins = tuple(self.ids[id(a)] for a in flat if self.tracked(a))
                    self.add("unsupported", ins, out, {"reason": str(e), "func": _fname(func)})
        elif isinstance(out, (tuple, list)):
            for i, t in enumerate(out):  # e.g. split/chunk/max with indices: nothing the transform knows
                if isinstance(t, Tensor) and any(self.tracked(a) for a in args):
                    ins = tuple(self.ids[id(a)] for a in args if self.tracked(a))
                    self.add("unsupported", ins, t, {"reason": "an op with several outputs", "func": _fname(func)})
        return out

    def translate(self, func: Callable, args: tuple, kwargs: dict, out: Tensor) -> None:
        """Record ``out = func(*args, **kwargs)`` as a node, or raise _Unsupported."""
        if func is torch.conv2d:
            a = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                      (None, 1, 0, 1, 1))
            w = a["weight"]
            attrs = {"stride": _pair(a["stride"]), "padding": a["padding"] if isinstance(a["padding"], str)
                     else _pair(a["padding"]), "dilation": _pair(a["dilation"]), "groups": int(a["groups"]),
                     "in_ch": int(a["input"].shape[1]), "out_ch": int(w.shape[0]), "kernel": tuple(w.shape[2:])}
            self.add("conv", (self.node(a["input"]),), out, attrs,
                     {**self.param(w, "weight"), **self.param(a["bias"], "bias", optional=True)})
        elif func is F.batch_norm:
            a = _bind(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias", "training",
                                     "momentum", "eps"), (None, None, False, 0.1, 1e-5))
            if a["training"] or a["running_mean"] is None:
                raise _Unsupported("batch_norm with batch statistics in eval mode (track_running_stats=False)")
            params = {**self.param(a["running_mean"], "running_mean"), **self.param(a["running_var"], "running_var"),
                      **self.param(a["weight"], "weight", optional=True),
                      **self.param(a["bias"], "bias", optional=True)}
            self.add("bn", (self.node(a["input"]),), out, {"eps": float(a["eps"])}, params)
        elif func is F.linear:
            a = _bind(args, kwargs, ("input", "weight", "bias"), (None,))
            self.add("linear", (self.node(a["input"]),), out, {},
                     {**self.param(a["weight"], "weight"), **self.param(a["bias"], "bias", optional=True)})
        elif (act := _activation(func)) is not None:
            funcs, names, defaults = ACTIVATIONS[act]
            a = _bind(args, kwargs, ("input",) + names, defaults)
            attrs = {"act": act, **{k: a[k] for k in names if k != "inplace"}}
            self.add("act", (self.node(a["input"]),), out, attrs)
        elif (binary := next((k for k, fs in _BINARY.items() if func in fs), None)) is not None:
            self.binary(binary, args, kwargs, out)
        elif func is F.max_pool2d or func is F.avg_pool2d:
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices") \
                if func is F.max_pool2d else ("input", "kernel_size", "stride", "padding", "ceil_mode",
                                              "count_include_pad", "divisor_override")
            defaults = (None, 0, 1, False, False) if func is F.max_pool2d else (None, 0, False, True, None)
            a = _bind(args, kwargs, names, defaults)
            attrs = {k: a[k] for k in names[1:]}
            attrs["kind"] = "max" if func is F.max_pool2d else "avg"
            self.add("pool", (self.node(a["input"]),), out, attrs)
        elif func is F.adaptive_avg_pool2d or func is F.adaptive_max_pool2d:
            a = _bind(args, kwargs, ("input", "output_size"), ())
            kind = "avg" if func is F.adaptive_avg_pool2d else "max"
            size = _pair(a["output_size"])
            if size == (1, 1):
                self.add("gap", (self.node(a["input"]),), out, {"kind": kind, "keepdim": True})
            else:
                self.add("apool", (self.node(a["input"]),), out, {"kind": kind, "size": size})
        elif func is torch.mean or func is T.mean:
            a = _bind(args, kwargs, ("input", "dim", "keepdim", "dtype"), (None, False, None))
            x, dims = a["input"], a["dim"]
            dims = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else (dims or ()))}
            if x.dim() != 4 or dims != {2, 3} or a["dtype"] is not None:
                raise _Unsupported("a mean over other dimensions than the spatial ones")
            self.add("gap", (self.node(x),), out, {"kind": "mean", "keepdim": bool(a["keepdim"])})
        elif func in (torch.flatten, T.flatten, T.view, T.reshape, torch.reshape):
            x = args[0]
            if x.dim() == 2 and tuple(out.shape) == tuple(x.shape):
                self.add("identity", (self.node(x),), out)
            elif x.dim() == 4 and tuple(out.shape) == (x.shape[0], x.shape[1] * x.shape[2] * x.shape[3]):
                self.add("flatten", (self.node(x),), out)
            else:
                raise _Unsupported(f"a reshape of {list(x.shape)} to {list(out.shape)} (only flatten after dim 0)")
        elif func in (F.dropout, F.dropout2d):
            a = _bind(args, kwargs, ("input", "p", "training", "inplace"), (0.5, True, False))
            self.add("dropout", (self.node(a["input"]),), out, {"p": float(a["p"])})
        elif func in (torch.cat, torch.concat, torch.concatenate):
            a = _bind(args, kwargs, ("tensors", "dim"), (0,))
            ts = list(a["tensors"])
            if a["dim"] % ts[0].dim() != 1 or ts[0].dim() != 4:
                raise _Unsupported("a concatenation along another dimension than the channels")
            self.add("cat", tuple(self.node(t) for t in ts), out)
        elif func in (T.contiguous, T.clone):
            self.add("identity", (self.node(args[0]),), out)
        else:
            raise _Unsupported("an op the transform does not know")

    def binary(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """add/sub/mul/div: of two feature maps (add, mul), or of a feature map and a number."""
        a = _bind(args, kwargs, ("input", "other", "alpha"), (1,))
        x, y = a["input"], a["other"]
        if a["alpha"] != 1:
            raise _Unsupported(f"{name} with alpha={a['alpha']}")
        if self.tracked(x) and self.tracked(y):
            if name not in ("add", "mul"):
                raise _Unsupported(f"{name} of two feature maps")
            self.add(name, (self.node(x), self.node(y)), out)
            return
        t, c = (x, y) if self.tracked(x) else (y, x)
        if isinstance(c, Tensor):
            if c.numel() != 1 or id(c) in self.names:
                raise _Unsupported(f"{name} with a tensor that is not computed from the input")
            c = float(c)
        if not isinstance(c, (int, float)) or isinstance(c, bool):
            raise _Unsupported(f"{name} with {type(c).__name__}")
        if name in ("sub", "div") and t is not x:
            raise _Unsupported(f"a number {name} a feature map")
        self.add("scalar", (self.node(t),), out, {"fn": name, "value": float(c)})


def _activation(func: Callable) -> str | None:
    for name, (funcs, _, _) in ACTIVATIONS.items():
        if func in funcs:
            return name
    return None


def _fname(func: Callable) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


@torch.no_grad()
def record_graph(model: nn.Module, example: Tensor) -> Graph:
    """Run ``model`` once on ``example`` in eval mode and record its graph (every module's mode is restored)."""
    rec = _Recorder(model)
    handles = []

    def enter(label: str) -> Callable[..., None]:
        return lambda mod, args: rec.stack.append(label)  # append returns None: the inputs stay

    def leave(mod: nn.Module, args: tuple, out: Any) -> None:
        rec.stack.pop()  # returns None: the output stays

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(enter(f"{name} ({type(mod).__name__})")))
            handles.append(mod.register_forward_hook(leave))
    modes = [(m, m.training) for m in model.modules()]
    rec.add("input", (), example)
    try:
        model.eval()
        with rec:
            out = model(example)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    if not isinstance(out, Tensor) or id(out) not in rec.ids:
        raise TransformError(f"from_static: {type(model).__name__} returns {type(out).__name__}, not one logits "
                             "tensor computed from its input; only single-output classifiers can be transformed")
    return Graph(rec.nodes, rec.ids[id(out)])
