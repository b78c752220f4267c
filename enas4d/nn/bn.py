"""BatchNorm re-estimation for one subnet (exact pooled statistics over a BN estimation set).

The supernet's BatchNorm keeps no running statistics while training (they would mix every
subnet), so a subnet is evaluated only after :func:`reestimate_bn` re-estimated them for it, on a
:class:`BNEstimationSet` (a fixed, cached subset of the training split). Training's validation, the
search and the export all go through it.

A supernet (:class:`TracksBNSubnet`) records which subnet its running statistics were estimated
for (``bn_subnet``: set by :func:`reestimate_bn` and :func:`load_bn_buffers`, saved in its state
dict and so in checkpoints) and refuses, with :class:`BNStatsError`, an eval-mode forward of
another subnet; ``MultiStageSupernet.extract`` refuses one too (:meth:`TracksBNSubnet.check_bn`).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from enas4d.nn.layers import MSBatchNorm2d
from enas4d.space import Subnet

if TYPE_CHECKING:
    from enas4d.models.supernet import MultiStageSupernet

__all__ = ["BNBuffers", "BNStatsError", "BNEstimationSet", "TracksBNSubnet", "bn_buffers", "evaluate_exits",
           "load_bn_buffers", "reestimate_bn"]

TAG_BYTES = 4096  # size of the saved tag: fixed, so state-dict copies between networks keep working
_EXTRA_STATE = "_extra_state"  # torch's state-dict key suffix of get_extra_state()


class BNStatsError(ValueError):
    """A subnet evaluated or extracted with BatchNorm statistics estimated for another subnet."""


def _check_before_forward(net: "TracksBNSubnet", _args: tuple) -> None:
    """Forward pre-hook: an eval-mode forward needs the active subnet's statistics."""
    if not net.training and net.bn_check and net.subnet is not net._bn_ok:
        net.check_bn(action="evaluate")


class TracksBNSubnet(nn.Module):
    """A supernet that records which subnet its BatchNorm running statistics belong to.

    ``bn_subnet`` is the subnet they were estimated for (None: unknown). :func:`reestimate_bn`
    sets it to the active subnet, :func:`load_bn_buffers` to the subnet the buffers were saved
    for; it travels in the state dict (``_extra_state``, so in checkpoints), and a state dict
    saved without it loads as unknown. A plain network (K = 1 and one architecture) with an
    unknown tag counts as holding the statistics of its only subnet (a static network's trained
    statistics). An eval-mode forward (a pre-hook) of a subnet the statistics do not belong to
    raises :class:`BNStatsError`, and so does ``extract`` where the subclass calls :meth:`check_bn`
    (``MultiStageSupernet`` does); statistics of a subnet serve that subnet with fewer exits too. ``bn_check = False`` (or :meth:`bn_unchecked`) switches the check off where
    the statistics do not matter (shapes, MACs, timing, hand-set test statistics).

    Subclasses provide ``space``, ``num_stages`` and ``subnet`` (the active subnet).
    """

    _bn_subnet: Subnet | None = None
    _bn_ok: Subnet | None = None  # the last subnet found to match (the forward check's cache)
    bn_check: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.register_forward_pre_hook(_check_before_forward)

    @property
    def bn_subnet(self) -> Subnet | None:
        """The subnet the BatchNorm running statistics were estimated for; None when unknown."""
        if self._bn_subnet is not None:
            return self._bn_subnet
        space = self.space
        if self.num_stages == 1 and space.smallest() == space.largest():
            return space.largest()
        return None

    def set_bn_subnet(self, s: Subnet | None) -> None:
        """Record that the running statistics are those of ``s`` (None: unknown)."""
        self._bn_subnet, self._bn_ok = s, None

    def bn_matches(self, s: Subnet) -> bool:
        """Whether the running statistics serve subnet ``s`` (the same architecture, no more exits)."""
        rec = self.bn_subnet
        if rec is None:
            return False
        if rec is s:
            return True
        return (len(rec.exits) == len(s.exits) and rec.with_all_exits() == s.with_all_exits()
                and all(r or not a for r, a in zip(rec.exits, s.exits)))

    def check_bn(self, s: Subnet | None = None, action: str = "evaluate") -> None:
        """Raise BNStatsError unless the statistics serve ``s`` (default: the active subnet)."""
        target = self.subnet if s is None else s
        if not self.bn_check or self.bn_matches(target):
            if s is None:
                self._bn_ok = target
            return
        rec = self.bn_subnet
        if rec is None:
            what = "no known subnet"
        else:
            try:
                self.space.validate(rec)
                what = f"subnet {rec.to_json()}"
            except ValueError:
                what = f"a subnet of another search space, {rec.to_json()}"
        name = getattr(self, "name", "") or type(self).__name__
        raise BNStatsError(f"{action} subnet {target.to_json()}: the BatchNorm running statistics of {name} were "
                           f"estimated for {what}; re-estimate them for this subnet first "
                           "(enas4d.nn.bn.reestimate_bn or BNEstimationSet.reestimate)")

    @contextlib.contextmanager
    def bn_unchecked(self) -> Iterator["TracksBNSubnet"]:
        """Context manager: no statistics check inside (for uses that read shapes, MACs or time)."""
        old = self.bn_check
        self.bn_check = False
        try:
            yield self
        finally:
            self.bn_check = old

    # ------------------------------------------------------------- state dict
    def get_extra_state(self) -> Tensor:
        """The tag as a fixed-size uint8 tensor: ``bn_subnet``'s JSON, zero-padded (all zeros: unknown)."""
        s = self.bn_subnet
        data = b"" if s is None else s.to_json().encode()
        if len(data) > TAG_BYTES:
            warnings.warn(f"bn_subnet: a subnet of {len(data)} JSON bytes is saved as unknown (limit {TAG_BYTES})")
            data = b""
        out = torch.zeros(TAG_BYTES, dtype=torch.uint8)
        if data:
            out[:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
        return out

    def set_extra_state(self, state: Any) -> None:
        """Read the tag :meth:`get_extra_state` wrote (anything else: unknown)."""
        s = None
        if isinstance(state, Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
            text = state.cpu().numpy().tobytes().rstrip(b"\0")
            try:
                s = Subnet.from_dict(json.loads(text)) if text else None
            except ValueError:
                s = None
        self.set_bn_subnet(s)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """A state dict saved before the tag existed loads, with the tag unknown."""
        key = prefix + _EXTRA_STATE
        had = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not had:
            self.set_bn_subnet(None)
            if key in missing_keys:
                missing_keys.remove(key)


@torch.no_grad()
def reestimate_bn(net: nn.Module, batches: Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]]) -> int:
    """Re-estimate the running statistics of every MSBatchNorm2d for the active subnet.

    Runs ``net`` in training mode (each BN normalises with its batch's statistics, as in training)
    over ``batches`` (tensors, or ``(x, y)`` pairs of which ``x`` is used) and writes the exact
    mean and unbiased variance pooled over all images into the running buffers of the active
    channels; a supernet records its active subnet as ``bn_subnet``. Returns the number of images
    seen. The module's train/eval mode is restored.
    """
    stats: dict[MSBatchNorm2d, list] = {}

    def hook(mod: MSBatchNorm2d, inputs: tuple, _out: Tensor) -> None:
        x, idx = inputs
        x64 = x.detach().to(torch.float64)
        n = x64.shape[0] * x64.shape[2] * x64.shape[3]
        s, sq = x64.sum((0, 2, 3)), (x64 * x64).sum((0, 2, 3))
        if mod in stats:
            acc = stats[mod]
            acc[0] += s
            acc[1] += sq
            acc[2] += n
        else:
            stats[mod] = [s, sq, n, idx]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, MSBatchNorm2d)]
    was_training = net.training
    seen = 0
    try:
        net.train()
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(next(net.parameters()).device)
            net(x)
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if seen == 0:
        raise ValueError("reestimate_bn: the BN estimation set is empty")
    for mod, (s, sq, n, idx) in stats.items():
        mean = s / n
        var = (sq / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
        if idx is None:
            mod.running_mean.copy_(mean)
            mod.running_var.copy_(var)
        else:
            mod.running_mean.index_copy_(0, idx, mean.to(mod.running_mean.dtype))
            mod.running_var.index_copy_(0, idx, var.to(mod.running_var.dtype))
    for m in net.modules():
        if isinstance(m, TracksBNSubnet):
            m.set_bn_subnet(m.subnet)
    return seen


class BNEstimationSet:
    """Image batches held in memory (on CPU) for BatchNorm re-estimation.

    Build it once from ``datamodule.bn_dataloader(num_images)`` (a fixed subset of the
    training split without augmentation); every :meth:`reestimate` then sees the same images.
    """

    def __init__(self, batches: Iterable[Tensor | Sequence[Tensor]]):
        self.batches: list[Tensor] = []  # each (B, C, H, W) float, normalised
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.batches.append(x.detach().cpu())
        if not self.batches:
            raise ValueError("BN estimation set: the BN dataloader yielded no batches")

    @property
    def num_images(self) -> int:
        """Images held."""
        return sum(b.shape[0] for b in self.batches)

    def reestimate(self, net: MultiStageSupernet, subnet: Subnet) -> None:
        """Make ``subnet`` active in ``net`` and re-estimate its BatchNorm statistics here."""
        net.set_subnet(subnet)
        reestimate_bn(net, self.batches)


class BNBuffers(list):
    """Saved (running_mean, running_var) of every MSBatchNorm2d, in module order, and ``subnet``:
    the subnet they were estimated for (None: unknown)."""

    def __init__(self, stats: Iterable[tuple[Tensor, Tensor]], subnet: Subnet | None):
        super().__init__(stats)
        self.subnet = subnet


def bn_buffers(net: MultiStageSupernet) -> BNBuffers:
    """Copies of every MSBatchNorm2d's (running_mean, running_var), in module order, with the
    subnet they belong to (``net.bn_subnet``)."""
    return BNBuffers([(m.running_mean.clone(), m.running_var.clone()) for m in net.modules()
                      if isinstance(m, MSBatchNorm2d)], getattr(net, "bn_subnet", None))


@torch.no_grad()
def load_bn_buffers(net: MultiStageSupernet, buffers: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Write back statistics saved by :func:`bn_buffers` (same network); ``net.bn_subnet`` becomes
    the subnet they were saved for (unknown for a plain sequence of pairs)."""
    mods = [m for m in net.modules() if isinstance(m, MSBatchNorm2d)]
    if len(mods) != len(buffers):
        raise ValueError(f"load_bn_buffers: {len(buffers)} saved entries for {len(mods)} BatchNorm layers")
    for m, (mean, var) in zip(mods, buffers):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    if isinstance(net, TracksBNSubnet):
        net.set_bn_subnet(getattr(buffers, "subnet", None))


@torch.no_grad()
def evaluate_exits(net: MultiStageSupernet, subnet: Subnet, bn_set: BNEstimationSet,
                   batches: Iterable[Sequence[Tensor]]) -> list[float]:
    """Top-1 accuracy of every exit of ``subnet`` (all exits enabled) after BN re-estimation.

    ``batches`` yields ``(x, y)``; the network runs in eval mode on its own device and is left
    with ``subnet`` active and its BN statistics re-estimated.
    """
    s = subnet.with_all_exits()
    bn_set.reestimate(net, s)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    correct, seen = torch.zeros(net.num_stages, dtype=torch.long), 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            for k, logits in enumerate(net(x)):
                correct[k] += int((logits.argmax(1) == y).sum())
            seen += y.shape[0]
    finally:
        net.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_exits: no evaluation batches")
    return (correct.double() / seen).tolist()
