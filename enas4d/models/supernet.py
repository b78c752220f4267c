"""The elastic multi-stage supernet: a table of groups (:class:`NetSpec`) turned into a network.

``set_subnet`` is the only writer of active state: it validates a :class:`Subnet`, derives every
layer's plan (index and mask tensors) and stores them; ``forward`` only reads the plan. The plan
includes the input resolution, so resolution is applied inside the model, never via globals.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enas4d.models import static as st
from enas4d.models.blocks import BasicBlock, BlockCfg, BlockPlan, MBBlock, MSBlock
from enas4d.models.spec import IDEMPOTENT_ACTS, NetSpec, exit_costs, slice_widths, space_from_spec
from enas4d.nn.bn import TracksBNSubnet
from enas4d.nn.layers import ConvPlan, MSBatchNorm2d, MSConv2d, active_index, make_act
from enas4d.space import Subnet


@dataclass
class HeadPlan:
    """Active input of one exit head."""

    n_in: int  # compact channels [s_1..s_k] it reads (a prefix of the feature map)
    cols: Tensor | None  # those channels in the max layout (None: all, in order)


@dataclass
class NetPlan:
    """Everything forward needs for the active subnet."""

    subnet: Subnet
    stem: ConvPlan
    blocks: list[BlockPlan | None] = field(default_factory=list)  # None: no slice runs the block
    heads: list[HeadPlan] = field(default_factory=list)
    stages: int = 0  # forward runs the first ``stages`` stages (all K but in training, see set_subnet)


class ExitHead(nn.Module):
    """Exit head k: [1x1 conv-BN-act] -> pool -> [linear-act] -> linear, reading slices 1..k of
    the last feature map. Its first layer's input columns are elastic; the rest is fixed."""

    def __init__(self, in_chs: tuple[int, ...], k: int, num_classes: int, conv: int | None,
                 hidden: int | None, act: str):
        super().__init__()
        self.in_chs, self.k = in_chs[:k + 1], k
        n_in = sum(self.in_chs)
        self.pre_conv = nn.Conv2d(n_in, conv, 1, bias=False) if conv else None
        self.pre_bn = MSBatchNorm2d((conv,)) if conv else None
        self.hidden = nn.Linear(conv or n_in, hidden) if hidden else None
        self.classifier = nn.Linear(hidden or conv or n_in, num_classes)
        self.act = make_act(act)

    def _first(self) -> nn.Module:
        """The layer whose input columns follow the active widths."""
        return self.pre_conv or self.hidden or self.classifier

    def forward(self, x: Tensor, p: HeadPlan) -> Tensor:
        """x (N, C_active, H, W) compact feature map -> (N, num_classes)."""
        x = x[:, :p.n_in]  # slices 1..k are a prefix of the compact layout
        first = self._first()
        w = first.weight if p.cols is None else first.weight.index_select(1, p.cols)
        if self.pre_conv is not None:
            x = self.act(self.pre_bn(F.conv2d(x, w), None))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.hidden is not None:
            x = self.act(F.linear(x, w, self.hidden.bias) if first is self.hidden else self.hidden(x))
        if first is self.classifier:
            return F.linear(x, w, self.classifier.bias)
        return self.classifier(x)

    def macs(self, n_in: int, hw: int) -> int:
        """Analytic MACs per image for ``n_in`` active input channels at side ``hw``."""
        total, feat = 0, n_in
        if self.pre_conv is not None:
            total += self.pre_conv.out_channels * n_in * hw * hw
            feat = self.pre_conv.out_channels
        if self.hidden is not None:
            total += self.hidden.out_features * feat
            feat = self.hidden.out_features
        return total + self.classifier.out_features * feat

    def extract(self, widths: Sequence[int]) -> st.Head:
        """Static head for the active last-group widths (of all slices; it reads 1..k)."""
        cols = active_index(self.in_chs, widths[:self.k + 1])

        def cut(layer: nn.Module) -> nn.Module:
            w = layer.weight.detach()
            if layer is self._first():
                w = w[:, cols]
            if isinstance(layer, nn.Conv2d):
                new: nn.Module = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
            else:
                new = nn.Linear(w.shape[1], w.shape[0])
                new.bias.data.copy_(layer.bias.detach())
            new.weight.data.copy_(w)
            return new

        pre: nn.Module = nn.Identity()
        hidden: nn.Module = nn.Identity()
        if self.pre_conv is not None:
            pre = st.ConvBNAct(cut(self.pre_conv), self.pre_bn.stage_bn(0, self.pre_bn.chs), type(self.act)())
        if self.hidden is not None:
            hidden = nn.Sequential(cut(self.hidden), type(self.act)())
        return st.Head(pre, hidden, cut(self.classifier))


class ActiveSubnet(TracksBNSubnet):
    """The active-subnet state every supernet shares: ``set_subnet`` (the subclass's, the only writer)
    stores a plan with a ``subnet`` field in ``_plan``; a move to another device rebuilds it there.
    It also records which subnet the BatchNorm statistics belong to (:class:`enas4d.nn.bn.TracksBNSubnet`)."""

    _plan: Any = None  # set by set_subnet

    def set_subnet(self, s: Subnet) -> None:
        """Make ``s`` the active subnet."""
        raise NotImplementedError

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's signature
        """Move/cast parameters (``.to``, ``.cuda``, ...), then rebuild the plan on the new device."""
        out = super()._apply(fn, recurse)
        if self._plan is not None:
            self._replan()
        return out

    def _replan(self) -> None:
        """Rebuild the active plan (on the parameters' device)."""
        self.set_subnet(self._plan.subnet)

    @property
    def subnet(self) -> Subnet:
        """The active subnet."""
        assert self._plan is not None
        return self._plan.subnet

    @contextlib.contextmanager
    def active(self, s: Subnet) -> Iterator["ActiveSubnet"]:
        """Context manager: ``s`` is active inside, the previous subnet is restored after."""
        old = self.subnet
        self.set_subnet(s)
        try:
            yield self
        finally:
            self.set_subnet(old)


class MultiStageSupernet(ActiveSubnet):
    """Elastic multi-stage supernet: K stages, each with its own exit, over one NetSpec.

    Args:
        spec: the family's table of groups and candidates.
        num_classes: classifier outputs of every exit.
        num_stages: K, the number of stages/exits (1..6).
        in_chans: input channels.
        name: registered name (kept for checkpoints).
    """

    def __init__(self, spec: NetSpec, num_classes: int, num_stages: int = 3, in_chans: int = 3,
                 name: str = ""):
        super().__init__()
        if not 1 <= num_stages <= 6:
            raise ValueError(f"num_stages: {num_stages} not allowed; allowed values: 1..6")
        if spec.block not in ("mb", "basic"):
            raise ValueError(f"spec.block: {spec.block!r} not allowed; allowed values: ['basic', 'mb']")
        # A basic block applies its activation after the residual add to every slice, including the
        # slices that skip it (they pass through): only an idempotent activation leaves those unchanged.
        bad = [gs.act for gs in spec.groups if spec.block == "basic" and gs.act not in IDEMPOTENT_ACTS]
        if bad:
            raise ValueError(f"spec.groups[].act={bad[0]!r} not allowed with basic blocks; allowed values: "
                             f"{list(IDEMPOTENT_ACTS)} (pass-through slices would be activated twice)")
        for key in ("slice_fracs", "reads_from"):
            v = getattr(spec, key)
            if v is not None and len(v) != num_stages:
                raise ValueError(f"spec.{key}={list(v)} not allowed; allowed: one entry per stage "
                                 f"({num_stages}) or null")
        self.spec, self.num_classes, self.num_stages, self.in_chans, self.name = \
            spec, num_classes, num_stages, in_chans, name
        self.space = space_from_spec(spec, num_stages)
        K = num_stages
        maxw = slice_widths(spec, K)
        reads = spec.reads_from
        self.stem = MSConv2d((in_chans,), maxw[0], 3, spec.stem_stride)
        self.stem_bn = MSBatchNorm2d(maxw[0])
        self.stem_act = make_act(spec.stem_act)
        self.blocks = nn.ModuleList()
        self._where: list[tuple[int, int]] = []  # (group, index in group) of every block
        max_k, max_e = max(spec.kernels), max(spec.expands or (1,))
        prev = maxw[0]
        for g, gs in enumerate(spec.groups):
            for b in range(gs.depth):
                stride = gs.stride if b == 0 else 1
                in_chs = prev if b == 0 else maxw[g]
                # Identity residual only where input and output width are the same gene.
                residual = b > 0 or (g == 0 and stride == 1)
                if spec.block == "mb":
                    blk: MSBlock = MBBlock(in_chs, maxw[g], max_e, max_k, stride, gs.act, residual, reads)
                else:
                    blk = BasicBlock(in_chs, maxw[g], max_k, stride, gs.act, residual, reads)
                self.blocks.append(blk)
                self._where.append((g, b))
            prev = maxw[g]
        self.heads = nn.ModuleList(ExitHead(maxw[-1], k, num_classes, spec.head_conv, spec.head_hidden,
                                            spec.head_act) for k in range(K))
        self._plan: NetPlan | None = None
        self.set_subnet(self.space.largest())

    # ------------------------------------------------------------------ config
    def block_cfgs(self, s: Subnet, stages: int | None = None) -> list[BlockCfg]:
        """Active shape of every block for subnet ``s`` (validated by the caller); slices of stages
        from ``stages`` on (None: none) are off."""
        K = self.num_stages
        m = K if stages is None else stages
        hw = (s.resolution - 1) // self.spec.stem_stride + 1
        cfgs = []
        for blk, (g, b) in zip(self.blocks, self._where):
            a = tuple(s.width[k][g if b > 0 or g == 0 else g - 1] if k < m else 0 for k in range(K))
            on = [k < m and b < s.depth[k][g] for k in range(K)]
            o = tuple(s.width[k][g] if on[k] else 0 for k in range(K))
            if s.expand is not None:
                h = tuple(s.expand[k][g] * a[k] if on[k] else 0 for k in range(K))
            else:
                h = o
            cfgs.append(BlockCfg(a, h, o, tuple(s.kernel[k][g] for k in range(K)), hw))
            hw = blk.out_hw(hw)
        return cfgs

    def _last_widths(self, s: Subnet) -> list[int]:
        return [s.width[k][-1] for k in range(self.num_stages)]

    def _final_hw(self, s: Subnet) -> int:
        hw = (s.resolution - 1) // self.spec.stem_stride + 1
        for blk in self.blocks:
            hw = blk.out_hw(hw)
        return hw

    # ------------------------------------------------------------ active state
    def set_subnet(self, s: Subnet, stages: int | None = None) -> None:
        """Make ``s`` the active subnet (validates it); the only writer of active state.

        ``stages`` (training only) runs the first ``stages`` stages of ``s``: forward returns their
        enabled exits and computes nothing of later stages (causality: their exits would be the same).
        A fine-tuning that keeps the last stage frozen trains this way (SupernetModule.train_stages).
        """
        self.space.validate(s)
        K = self.num_stages
        m = K if stages is None else int(stages)
        if not 1 <= m <= K:
            raise ValueError(f"stages={stages} not allowed; allowed: 1..{K} or None")
        w0 = [s.width[k][0] if k < m else 0 for k in range(K)]
        stem = self.stem.plan((self.in_chans,), w0, (3,) * K)
        blocks: list[BlockPlan | None] = []
        for blk, cfg in zip(self.blocks, self.block_cfgs(s, m)):
            blocks.append(blk.plan(cfg) if any(cfg.active) else None)
        last = self._last_widths(s)
        heads = []
        for k, head in enumerate(self.heads[:m]):
            cols = active_index(head.in_chs, last[:k + 1])
            full = len(cols) == sum(head.in_chs)
            heads.append(HeadPlan(len(cols), None if full else torch.tensor(cols, dtype=torch.long,
                                                                            device=self.stem.weight.device)))
        self._plan = NetPlan(s, stem, blocks, heads, m)

    def _replan(self) -> None:
        """Rebuild the active plan (on the parameters' device), stage limit included."""
        self.set_subnet(self._plan.subnet, self._plan.stages)

    # ----------------------------------------------------------------- forward
    def check_input(self, x: Tensor) -> None:
        """Raise a clear ValueError for input that is not (N, in_chans, H, W) floating point."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"input: expected a (N, {self.in_chans}, H, W) tensor, got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"input: expected a floating-point tensor, got {x.dtype}")

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> logits of every enabled exit of the active subnet, each (N, classes)."""
        self.check_input(x)
        p = self._plan  # built on the module's device by set_subnet (and again by _apply on a move)
        r = p.subnet.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        x = self.stem_act(self.stem_bn(self.stem(x, p.stem), p.stem.out_idx))
        for blk, bp in zip(self.blocks, p.blocks):
            if bp is not None:
                x = blk(x, bp)
        return [head(x, hp) for head, hp, on in zip(self.heads, p.heads, p.subnet.exits[:p.stages]) if on]

    # -------------------------------------------------------------------- MACs
    def stage_macs(self, s: Subnet) -> tuple[list[int], list[int]]:
        """Per-image MACs of each stage's body increment and of each exit head (all K)."""
        self.space.validate(s)
        K = self.num_stages
        hw0 = (s.resolution - 1) // self.spec.stem_stride + 1
        w0 = [s.width[k][0] for k in range(K)]
        body = [self.stem.macs(k, (self.in_chans,), w0, 3, hw0) for k in range(K)]
        for blk, cfg in zip(self.blocks, self.block_cfgs(s)):
            for k, m in enumerate(blk.macs(cfg)):
                body[k] += m
        last, hw = self._last_widths(s), self._final_hw(s)
        heads = [head.macs(sum(last[:k + 1]), hw) for k, head in enumerate(self.heads)]
        return body, heads

    def macs(self, s: Subnet) -> list[int]:
        """Cumulative MACs per image of every enabled exit: C_k = sum_{j<=k} body_j + enabled heads."""
        return [c for c, on in zip(exit_costs(*self.stage_macs(s), s.exits), s.exits) if on]

    # ----------------------------------------------------------------- extract
    def extract(self, s: Subnet) -> st.StaticMultiStageNet:
        """A standalone network of real shapes computing subnet ``s`` (eval-mode statistics: those of
        ``s``, else BNStatsError; see :class:`enas4d.nn.bn.TracksBNSubnet`)."""
        self.space.validate(s)
        self.check_bn(s, action="extract")
        K = self.num_stages
        cfgs = self.block_cfgs(s)
        w0 = tuple(s.width[k][0] for k in range(K))
        last = self._last_widths(s)
        present: list[int] = []  # global tap ids earlier stages hold, in order
        stages = []
        for k in range(K):
            ops: list[nn.Module] = []
            pos: dict[int, int] = {}  # global tap id -> position in this stage's list
            prev_pos = {t: i for i, t in enumerate(present)}
            # A last stage that reads no earlier slice (reads_from) keeps its own slices only and
            # joins the earlier ones once, for its head: no copy of them before every layer.
            own_only = k == K - 1 and k > 0 and (self.spec.reads_from or (0,) * K)[k] == k
            joined_prev = prev_pos
            if own_only:
                prev_pos = {}

            def place(tap: int, op: nn.Module | None) -> None:
                if op is None:
                    if tap not in prev_pos:
                        return
                    op = st.KeepOp(prev_pos[tap])
                pos[tap] = len(ops)
                ops.append(op)

            stem = st.ConvBNAct(self.stem.stage_conv(k, (self.in_chans,), w0, 3),
                                self.stem_bn.stage_bn(k, w0), type(self.stem_act)())
            place(0, st.StemOp(stem, prev_pos.get(0, -1)))
            in_tap = 0
            for i, (blk, cfg) in enumerate(zip(self.blocks, cfgs)):
                hid_tap, out_tap = 1 + 2 * i, 2 + 2 * i
                if not any(cfg.active):
                    continue  # nobody runs this block: its input tap is its output
                # When slice k runs the block, its hidden op is placed next: at len(ops).
                hid, out = blk.stage_ops(cfg, k, pos[in_tap], len(ops),
                                         prev_pos.get(hid_tap, -1), prev_pos.get(out_tap, -1), own_only)
                place(hid_tap, hid)
                place(out_tap, out)
                in_tap = out_tap
            if own_only:  # the head reads [earlier slices | own slice] of the last feature map
                ops.append(st.JoinOp(pos[in_tap], joined_prev.get(in_tap, -1)))
            head = self.heads[k].extract(last) if s.exits[k] else st.NoHead()
            stages.append(st.StaticStage(ops, head, bool(s.exits[k])))
            present = list(pos)
        net = st.StaticMultiStageNet(stages, s.resolution, self.in_chans)
        return net.eval()
