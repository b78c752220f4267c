"""S2DNAS "split and concat": turn a trained static CNN into a multi-stage supernet of its weights.

The static network is a one-architecture :class:`MultiStageSupernet` with K = 1 (for example
``resnet20_static``). Its every weight tensor has exactly the shape of the K-stage supernet's over
the same :class:`NetSpec`: a K-stage layer stores one full ``(sum out, sum in, r, r)`` weight and
masks its upper triangle of slices (design.md section 3). So the transform is

1. **order channels by importance** (optional, on by default): within every tied channel space
   (the channels of one group, which residual adds tie together, and the hidden channels of each
   block) sort channels by the L1 norm of their BatchNorm-folded producing weights, most important
   first. A permutation of a tied space is function-preserving, and after it slice 1 (the first
   stage) holds the most useful channels, as once-for-all sorts channels before shrinking widths;
2. **split**: copy every tensor into the K-stage supernet (same shapes); the block-lower-triangular
   mask then drops what an earlier stage would read from a later one. Larger kernel candidates
   start as the static kernel with a zero ring. Exit head K is the static classifier; head k < K
   starts from the static classifier's columns of the channels it reads.

With K = 1 and the static candidates the result computes exactly the static network.

**Grow** (``grow=(f_1, ..., f_{K-1})``, an option next to the paper's split): instead of cutting
the static network into K pieces, put K - 1 *new* slices in front of it, f_k times as wide as the
static layer in every layer. The new stages read only each other (lower-triangular, as in a
split); the last stage is the whole static network and reads only its own slice (NetSpec
``reads_from``: the paper's concat indicators), so its exit computes exactly the static network
at exactly its MACs; the new stages start as the paper's split of its leading channels (when the
fractions sum to at most 1) and are what fine-tuning trains. Splitting the static network itself, by
contrast, removes every weight from a later slice into an earlier one and takes every exit to
near chance, which fine-tuning must then recover (README, Results).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from enas4d.models.blocks import MSBlock
from enas4d.models.spec import NetSpec
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.layers import MSBatchNorm2d, MSConv2d, offsets

__all__ = ["TransformError", "channel_importance", "from_static", "frozen_static_training", "grown_static_masks",
           "sort_channels"]


class TransformError(ValueError):
    """A static model or transform setting that cannot be turned into a multi-stage supernet."""


# ------------------------------------------------------------------ permutation
def _folded_l1(conv: MSConv2d, bn: MSBatchNorm2d) -> Tensor:
    """(C_out,) L1 norm of every output row of ``conv`` with ``bn``'s scale folded in."""
    scale = bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight.detach().abs().flatten(1).sum(1) * scale


def _permute_rows(conv: MSConv2d, bn: MSBatchNorm2d | None, perm: Tensor) -> None:
    conv.weight.data = conv.weight.data[perm].contiguous()
    if bn is not None:
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.data = t.data[perm].contiguous()


def _permute_cols(layer: nn.Module, perm: Tensor) -> None:
    layer.weight.data = layer.weight.data[:, perm].contiguous()


def _groups(net: MultiStageSupernet) -> list[list[MSBlock]]:
    """Blocks of every group, in order."""
    out: list[list[MSBlock]] = [[] for _ in net.spec.groups]
    for blk, (g, _) in zip(net.blocks, net._where):
        out[g].append(blk)
    return out


def _producers(net: MultiStageSupernet, g: int) -> list[tuple[MSConv2d, MSBatchNorm2d]]:
    """(conv, bn) pairs that write the channels of group ``g`` (residual adds tie them)."""
    out = [(net.stem, net.stem_bn)] if g == 0 else []
    for blk in _groups(net)[g]:
        out.append((blk.convs[-1], blk.bns[-1]))
        if blk.sc_conv is not None:
            out.append((blk.sc_conv, blk.sc_bn))
    return out


def _consumers(net: MultiStageSupernet, g: int) -> list[nn.Module]:
    """Layers that read the channels of group ``g`` (their input columns follow its order)."""
    groups = _groups(net)
    # A group's first block reads the previous group (the stem, for group 0), the others this one.
    readers = (groups[g] if g == 0 else groups[g][1:]) + (groups[g + 1][:1] if g + 1 < len(groups) else [])
    out: list[nn.Module] = []
    for blk in readers:
        out.append(blk.convs[0])
        if blk.sc_conv is not None:
            out.append(blk.sc_conv)
    if g == len(groups) - 1:
        out.extend(head._first() for head in net.heads)
    return out


def channel_importance(net: MultiStageSupernet) -> tuple[list[Tensor], list[Tensor]]:
    """Importance of every channel: (per group, per block's hidden space), each (C,)."""
    groups = [sum(_folded_l1(c, b) for c, b in _producers(net, g)) for g in range(len(net.spec.groups))]
    hidden = [_folded_l1(blk.convs[0], blk.bns[0]) for blk in net.blocks]
    return groups, hidden


@torch.no_grad()
def sort_channels(net: MultiStageSupernet) -> MultiStageSupernet:
    """A copy of a K = 1 network with every tied channel space ordered by importance (same function)."""
    if net.num_stages != 1:
        raise TransformError(f"sort_channels: expects the static network (K = 1), got K = {net.num_stages}")
    net = copy.deepcopy(net)
    groups, hidden = channel_importance(net)
    for g, imp in enumerate(groups):
        perm = torch.argsort(imp, descending=True, stable=True)
        for conv, bn in _producers(net, g):
            _permute_rows(conv, bn, perm)
        for layer in _consumers(net, g):
            _permute_cols(layer, perm)
    for blk, imp in zip(net.blocks, hidden):
        perm = torch.argsort(imp, descending=True, stable=True)
        # Hidden chain: every conv but the last writes it (a depthwise conv reads and writes it).
        for conv, bn in zip(blk.convs[:-1], blk.bns[:-1]):
            _permute_rows(conv, bn, perm)
        _permute_cols(blk.convs[-1], perm)
    return net


# -------------------------------------------------------------------- transform
def _fit(src: Tensor, shape: torch.Size, name: str) -> Tensor:
    """``src`` placed into a tensor of ``shape``: same shape, a centred larger kernel, or a column prefix."""
    if src.shape == shape:
        return src.clone()
    if src.dim() == 4 and src.shape[:2] == shape[:2] and shape[2] >= src.shape[2]:
        out = src.new_zeros(shape)
        c = (shape[2] - src.shape[2]) // 2
        out[:, :, c:c + src.shape[2], c:c + src.shape[3]] = src
        return out
    if src.dim() >= 2 and src.shape[0] == shape[0] and shape[1] < src.shape[1] and src.shape[2:] == shape[2:]:
        return src[:, :shape[1]].clone()  # an early exit head reads a prefix of the channels
    raise TransformError(f"from_static: cannot place {name} of shape {list(src.shape)} into {list(shape)}")


@torch.no_grad()
def _grow_weights(net: MultiStageSupernet, source: MultiStageSupernet, seed_new: bool) -> None:
    """Write ``source`` (K = 1) into the last slice of every layer of ``net`` (the last slice's
    weights from the new slices are zero). With ``seed_new`` the new slices start as a split of the
    source's leading (most important, once sorted) channels, as the paper's split would make them:
    the new slices' block of every layer is the source's leading block; else they keep their fresh
    initialisation."""
    src = dict(source.named_modules())
    for name, m in net.named_modules():
        if isinstance(m, MSConv2d):
            s = src[name]
            r0 = offsets(m.out_chs)[-1]
            single = m.depthwise or len(m.in_chs) == 1
            c0 = 0 if single else offsets(m.in_chs)[-1]
            if seed_new:  # rows and columns of the new slices: the source's leading ones
                cols = s.weight.shape[1] if single else c0
                m.weight[:r0, :cols].copy_(_fit(s.weight[:r0, :cols], m.weight[:r0, :cols].shape, name + ".weight"))
            block = m.weight[r0:]
            block.zero_()
            cols = block[:, c0:c0 + s.weight.shape[1]]
            cols.copy_(_fit(s.weight, cols.shape, name + ".weight"))
        elif isinstance(m, MSBatchNorm2d) and name.startswith(("stem", "blocks")):
            s = src[name]
            r0 = offsets(m.chs)[-1]
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(m, key)[r0:].copy_(getattr(s, key))
                if seed_new:
                    getattr(m, key)[:r0].copy_(getattr(s, key)[:r0])
    s_head = source.heads[0]
    s_rest = {k: v for k, v in s_head.state_dict().items() if not k.startswith(_first_name(s_head))}
    s_first = s_head._first()
    for k, head in enumerate(net.heads):
        if k < len(net.heads) - 1 and not seed_new:
            continue
        head.load_state_dict(s_rest, strict=False)
        first = head._first()
        if k == len(net.heads) - 1:  # the static head, reading the static slice (the new ones at zero)
            first.weight.zero_()
            first.weight[:, sum(head.in_chs[:-1]):] = s_first.weight
        else:  # the source's columns of the channels the new slices hold
            first.weight.copy_(s_first.weight[:, :first.weight.shape[1]])
        if getattr(first, "bias", None) is not None:
            first.bias.copy_(s_first.bias)


def _first_name(head: nn.Module) -> str:
    """State-dict prefix of a head's first layer (the one whose input columns follow the widths)."""
    first = head._first()
    return next(n for n, m in head.named_children() if m is first) + "."


def _grow_spec(spec: NetSpec, grow: Sequence[float], num_stages: int) -> NetSpec:
    """The spec of ``spec`` with ``len(grow)`` new slices, each f times every group's width, in front."""
    if len(grow) != num_stages - 1 or any(not 0 < f for f in grow):
        raise TransformError(f"grow={list(grow)} not allowed; allowed: num_stages - 1 = {num_stages - 1} "
                             f"positive width fractions of the new stages")
    groups = []
    for gs in spec.groups:
        new = [f * gs.width for f in grow]
        if any(abs(n - round(n)) > 1e-9 or round(n) < 1 for n in new):
            raise TransformError(f"grow={list(grow)} not allowed for a group {gs.width} wide; allowed: fractions "
                                 f"that give every group a whole number of channels (e.g. 0.25, 0.5)")
        groups.append(dataclasses.replace(gs, width=gs.width + sum(round(n) for n in new)))
    return dataclasses.replace(spec, groups=tuple(groups), slice_fracs=(*map(float, grow), 1.0),
                               reads_from=(0,) * (num_stages - 1) + (num_stages - 1,))


def from_static(static: MultiStageSupernet, num_stages: int = 3, *,
                width_mults: Sequence[float] | None = None, kernels: Sequence[int] | None = None,
                depths: Sequence[int] | None = None, resolutions: Sequence[int] | None = None,
                sort: bool = True, grow: Sequence[float] | None = None, fixed_static: bool = False,
                name: str | None = None) -> MultiStageSupernet:
    """A K-stage supernet initialised from the static network ``static`` (see the module docstring).

    Args:
        static: a K = 1 network (e.g. ``create_supernet("resnet20_static", num_stages=1)``) with
            its trained weights and BatchNorm statistics.
        num_stages: K, the stages (exits) of the result.
        width_mults / kernels / depths / resolutions: the elastic candidates of the result's space
            (None keeps the static value only). Widths are fractions of each slice's maximum;
            kernels must be at least the static kernel; depths are clipped to each group's depth.
        sort: order channels by importance before splitting (``sort_channels``).
        grow: None splits the static network (the paper); K - 1 width fractions grow new, cheap
            stages in front of it instead, the static network being the last stage (module docstring).
            When the fractions sum to at most 1 the new stages start as a split of the static
            network's leading channels; otherwise from a fresh initialisation.
        fixed_static: grow only: the static stage has no elastic choice (``NetSpec.fixed_last``): it is
            the whole static network in every subnet, as when fine-tuning keeps it frozen.
        name: the result's name (kept in checkpoints); default ``"<static name>-s2dnas"``.
    """
    if static.num_stages != 1:
        raise TransformError(f"from_static: the source must be a static (K = 1) network, got K = {static.num_stages}")
    spec: NetSpec = static.spec
    if len(spec.kernels) != 1 or len(spec.width_mults) != 1:
        raise TransformError(f"from_static: the source {static.name!r} is elastic; give its static network")
    base_k = spec.kernels[0]
    if kernels is not None and min(kernels) < base_k:
        raise TransformError(f"from_static: kernels={list(kernels)} not allowed; allowed: sizes >= the static "
                             f"kernel {base_k} (smaller ones would drop trained weights)")
    narrowest = min(gs.width for gs in spec.groups)
    if grow is not None and not 2 <= num_stages <= 6:
        raise TransformError(f"num_stages={num_stages} not allowed with grow; allowed: 2..6")
    if fixed_static and grow is None:
        raise TransformError("fixed_static=true not allowed without grow: a split network has no stage that is "
                             "the static network")
    if grow is None and not 1 <= num_stages <= narrowest:
        raise TransformError(f"num_stages={num_stages} not allowed; allowed: 1..{min(6, narrowest)} "
                             f"(every stage needs a channel of the narrowest group, {narrowest} wide)")
    new_spec = dataclasses.replace(
        spec if grow is None else _grow_spec(spec, grow, num_stages),
        width_mults=tuple(width_mults) if width_mults is not None else spec.width_mults,
        kernels=tuple(kernels) if kernels is not None else spec.kernels,
        depths=tuple(depths) if depths is not None else spec.depths,
        resolutions=tuple(resolutions) if resolutions is not None else spec.resolutions,
        fixed_last=fixed_static,
    )
    source = sort_channels(static) if sort else static
    net = MultiStageSupernet(new_spec, static.num_classes, num_stages, static.in_chans,
                             name=name or f"{static.name}-s2dnas")
    if grow is not None:
        _grow_weights(net, source, seed_new=sum(grow) <= 1)
        net.set_subnet(net.space.largest())
        return net
    src = source.state_dict()
    head_map = {f"heads.{k}.": "heads.0." for k in range(num_stages)}
    new_state = {}
    for key, t in net.state_dict().items():
        skey = key
        for prefix, sprefix in head_map.items():
            if key.startswith(prefix):
                skey = sprefix + key[len(prefix):]
        if skey not in src:
            raise TransformError(f"from_static: the static network has no tensor for {key!r}")
        new_state[key] = _fit(src[skey], t.shape, key)
    net.load_state_dict(new_state)
    net.set_subnet(net.space.largest())
    return net  # in training mode, as a new module


def frozen_static_training(net: MultiStageSupernet) -> dict[str, Any]:
    """SupernetModule arguments that fine-tune a grown supernet with its static stage frozen: the
    entries kept fixed (:func:`grown_static_masks`) and training run on the K - 1 stages before it
    (the frozen stage reads no earlier slice, so it trains nothing and would cost most of the step)."""
    return {"frozen": grown_static_masks(net), "train_stages": net.num_stages - 1}


def grown_static_masks(net: MultiStageSupernet) -> dict[str, Tensor]:
    """Parameter name -> bool mask of the entries that hold the static network in a grown supernet:
    the last slice's rows of every body layer (convolutions and BatchNorm affine parameters) and the
    last exit head. Fine-tuning with these fixed keeps the last exit the static network (measured:
    with a trainable last head it lost 1.3 points in 3 fine-tuning epochs at lr 0.1)."""
    spec = net.spec
    K = net.num_stages
    if spec.reads_from is None or spec.reads_from[-1] != K - 1 or K < 2:
        raise TransformError("supernet.freeze_static: only a grown supernet (supernet.grow) has a static "
                             "stage to keep; allowed with grow, or false")
    masks: dict[str, Tensor] = {}
    for name, m in net.named_modules():
        if not name.startswith(("stem", "blocks")):
            continue
        if isinstance(m, MSConv2d):
            mask = torch.zeros_like(m.weight, dtype=torch.bool)
            mask[offsets(m.out_chs)[-1]:] = True
            masks[f"{name}.weight"] = mask
        elif isinstance(m, MSBatchNorm2d):
            mask = torch.zeros_like(m.weight, dtype=torch.bool)
            mask[offsets(m.chs)[-1]:] = True
            masks[f"{name}.weight"] = masks[f"{name}.bias"] = mask
    for name, p in net.heads[K - 1].named_parameters():
        masks[f"heads.{K - 1}.{name}"] = torch.ones_like(p, dtype=torch.bool)
    return masks
