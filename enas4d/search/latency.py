"""Latency budgets: a per-device latency model of a supernet's subnets (once-for-all style).

The search space is far too large for a table of every architecture, so, as once-for-all does for
its devices, :func:`profile_supernet` times a sample of architectures on the machine it runs on
and fits a predictor. What is timed is what ``enas4d-export`` deploys: the extracted subnet inside
the early-exit runner (:func:`~enas4d.export.early_exit.build_early_exit`, BatchNorm folded,
TorchScript by default), eval mode, ``torch.no_grad``, after warm-up, the median of repeats. For
each enabled exit ``e`` the thresholds force every image of the batch to leave at ``e`` (``+inf``
before it, ``0`` at it), which times exactly the *cumulative latency of exit e*: preprocessing,
stages ``<= e``, the enabled heads and decisions on the way, and the scatter of the results.

The predictor is additive over stages, like MACs (design.md section 3): stage ``k`` costs
``body_k = w_body . f_body[k]`` and, when its exit is enabled, ``head_k = w_head . f_head[k]``
seconds per image, so the cumulative latency of exit ``e`` is the sum over stages ``<= e`` of the
bodies and the enabled heads: the same ``(body, heads)`` pair the threshold calibration takes for
MACs (:func:`~enas4d.search.calibrate.exit_costs`). The features of a stage (:data:`BODY_FEATURES`,
:data:`HEAD_FEATURES`) are read off the extracted static network by one forward pass at batch 1:
MACs, the im2col size of its convolutions (thin convolutions cost more per MAC), the elements
they write, the elements of the feature maps ("taps") the stage writes (the ``torch.cat`` of earlier
slices included), the number of convolutions and ops (per-call overhead) and, for stage 1, the
preprocessed image. The weights are fitted by non-negative least squares on relative errors
(every increment stays >= 0, so predicted latency never falls from one exit to the next), one
model per profiled batch size, and checked on architectures held out of the fit.

At a batch size ``B > 1``, the cumulative latency of exit ``e`` is the time per image of a batch
whose images all leave at ``e``. In deployment stage ``k`` runs only on the images still undecided,
a smaller batch, where its fixed per-call cost is shared by fewer images (on one thread, a stage run
on 5 images of a digits subnet costs 2-3x its batch-64 time per image). So a stage's call on
``n`` images costs ``a_k + b_k * n`` seconds: a per-call part and a per-image part, fitted per
stage (:func:`fit_per_call`) from the profile's predictions at batch ``B`` and at the smaller batch
sizes it timed (``sub_batch_sizes``, by default ``B/32`` and ``B/8``, at least 2) in the memory layout
that batch ``B`` runs in (the export runs a single image in another one, so batch 1 counts only for
networks that run it channels-last too). The line goes through the batch-``B`` prediction, so
forcing every image out at one exit is predicted as before. The expected latency per image of exit
rates ``r`` at batch ``B`` is then ``(1/B) * sum_k [a_k * (reach_k > 0) + b_k * B * reach_k]``,
``reach_k`` the fraction of images still undecided when stage ``k`` starts; a stage that no image
reaches is skipped by the export and costs nothing
(:func:`~enas4d.search.calibrate.expected_cost`, the one rule, which the search's threshold
calibration, its result, the export and ``enas4d-evaluate`` all use). :class:`LatencyCosts` gives
the search these per-stage costs in integer nanoseconds; :func:`predicted_vs_measured` checks the
prediction against a measured export. A profile written before the per-call fit (version 1: batch 1
and ``B`` only, no layouts) is refitted from those two batch sizes, with a note; a profile of one
batch size predicts per image (exact at batch 1).

A profile is a JSON file (:class:`DeviceProfile`, written atomically) naming the machine, torch,
threads, clock, the supernet (by a fingerprint of its architecture: any checkpoint of the same
supernet shares it), the batch sizes, the features and coefficients per batch size, and the fit
errors. The search charges costs in integer nanoseconds per image (:data:`NS_PER_SECOND`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import enas4d
from enas4d.search.calibrate import exit_costs, expected_cost, forced_exit_costs
from enas4d.space import Subnet
from enas4d.utils.files import file_digest, read_json, write_json
from enas4d.utils.seed import make_generator

__all__ = ["PROFILE_FORMAT", "PROFILE_VERSION", "BODY_FEATURES", "HEAD_FEATURES", "CLOCKS", "RUNTIMES",
           "NS_PER_SECOND", "LatencyError", "ProfileSettings", "StageFeatures", "LatencyModel", "CallFit",
           "DeviceProfile", "LatencyCosts", "supernet_fingerprint", "stage_features", "fit_latency", "fit_per_call",
           "call_fit_errors", "profile_supernet", "predicted_vs_measured", "timer"]

PROFILE_FORMAT = "enas4d-device-profile"
# 2: sub-batch sizes and the memory layout of each batch size (for the per-call fit); 1 is still read.
PROFILE_VERSION = 2
READ_VERSIONS = (1, 2)
# Per-stage body features: all per image; "const" is the stage's fixed cost (runner and call overhead).
BODY_FEATURES = ("const", "macs", "conv_unfold", "conv_out", "tap_elems", "convs", "ops", "image_elems")
# Per-exit head features (only where the exit is enabled): head MACs and the feature map it pools.
HEAD_FEATURES = ("const", "macs", "in_elems")
CLOCKS = ("wall", "cpu")  # cpu: CPU time of this thread (threads=1) or process: steadier on a shared machine
RUNTIMES = ("torchscript", "eager")  # torchscript: what enas4d-export's model.ts runs
NS_PER_SECOND = 1e9  # the search's integer cost unit for latency: nanoseconds per image
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


class LatencyError(ValueError):
    """A profile or latency budget that cannot be used; the message is one line naming the field."""


def supernet_fingerprint(supernet: Mapping[str, Any], space: Mapping[str, Any]) -> str:
    """16 hex characters naming a supernet architecture: a checkpoint's ``supernet`` entry (name,
    classes, stages, input channels, spec) and its search space; weights do not enter it."""
    text = json.dumps({"supernet": dict(supernet), "space": dict(space)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- features
@dataclass(frozen=True)
class StageFeatures:
    """Latency features of one architecture, every stage (whether or not its exit is enabled)."""

    body: np.ndarray  # (K, len(BODY_FEATURES)) float64
    head: np.ndarray  # (K, len(HEAD_FEATURES)) float64

    def cumulative(self, exits: Sequence[bool]) -> np.ndarray:
        """(E, F_body + F_head) summed features of the enabled exits' cumulative latencies."""
        rows, acc = [], np.zeros(self.body.shape[1] + self.head.shape[1])
        for k, on in enumerate(exits):
            acc = acc + np.concatenate([self.body[k], self.head[k] if on else np.zeros_like(self.head[k])])
            if on:
                rows.append(acc.copy())
        return np.stack(rows)


def _conv_stats(m: nn.Conv2d, out: Tensor) -> tuple[float, float]:
    """(im2col elements, output elements) per image of one convolution's call."""
    _, c_out, h, w = out.shape
    kh, kw = m.kernel_size
    return float((m.in_channels // m.groups) * kh * kw * h * w), float(c_out * h * w)


@torch.no_grad()
def stage_features(net: nn.Module, s: Subnet) -> StageFeatures:
    """The :class:`StageFeatures` of ``s`` (its exits ignored), from its extracted static network.

    ``net`` is a supernet (``extract`` and ``stage_macs``); one batch-1 forward pass of the static
    network gives the shapes. Ops that hand an earlier stage's tap on unchanged write nothing.
    """
    s = s.with_all_exits()
    with net.bn_unchecked():  # shapes only: whose BatchNorm statistics it holds does not matter
        static = net.extract(s).eval()
    body_macs, head_macs = net.stage_macs(s)
    K = s.num_stages
    body = np.zeros((K, len(BODY_FEATURES)))
    head = np.zeros((K, len(HEAD_FEATURES)))
    col = {name: i for i, name in enumerate(BODY_FEATURES)}
    handles = []

    def on_conv(k: int) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
            unfold, written = _conv_stats(m, out)
            body[k, col["conv_unfold"]] += unfold
            body[k, col["conv_out"]] += written
            body[k, col["convs"]] += 1
        return hook

    def on_op(k: int) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
            prev = args[1] if len(args) > 1 else []
            if any(out is t for t in prev):  # an earlier stage's tap handed on: no new tensor
                return
            body[k, col["tap_elems"]] += out[0].numel()
            body[k, col["ops"]] += 1
        return hook

    def on_head(k: int) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
            head[k, 2] = args[0][0].numel()
        return hook

    try:
        for k, stage in enumerate(static.stages):
            for op in stage.ops:
                handles.append(op.register_forward_hook(on_op(k)))
                handles += [c.register_forward_hook(on_conv(k)) for c in op.modules() if isinstance(c, nn.Conv2d)]
            handles.append(stage.head.register_forward_hook(on_head(k)))
        static(torch.zeros(1, static.in_chans, s.resolution, s.resolution))
    finally:
        for h in handles:
            h.remove()
    body[:, col["const"]] = 1.0
    body[:, col["macs"]] = body_macs
    body[0, col["image_elems"]] = static.in_chans * s.resolution ** 2
    head[:, 0] = 1.0
    head[:, 1] = head_macs
    return StageFeatures(body, head)


# ------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class LatencyModel:
    """Seconds per image of every stage increment at one batch size: linear in the features."""

    batch_size: int
    body: np.ndarray  # (len(BODY_FEATURES),) seconds per feature unit, >= 0
    head: np.ndarray  # (len(HEAD_FEATURES),)

    def stage_seconds(self, f: StageFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(K,) body and (K,) head seconds per image (heads counted only where exits are enabled)."""
        return f.body @ self.body, f.head @ self.head

    def exit_seconds(self, f: StageFeatures, exits: Sequence[bool]) -> np.ndarray:
        """(E,) predicted cumulative latency of each enabled exit, seconds per image."""
        return f.cumulative(exits) @ np.concatenate([self.body, self.head])


def fit_per_call(per_image: Mapping[int, np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-call ``a`` and per-image ``b`` seconds of each stage at ``batch_size``: a call on ``n`` images costs
    ``a + b * n``.

    ``per_image`` maps batch sizes (``batch_size`` among them, the others smaller) to (K,) predicted
    seconds per image of each stage when the whole batch runs it. The line passes through the
    per-call time at ``batch_size`` (``batch_size * per_image[batch_size]``); its slope is the least
    squares fit of the relative errors at the other batch sizes (points of zero time ignored),
    clipped so that ``a, b >= 0``. With no other batch size: ``a = 0``, ``b`` the per-image time.
    """
    B = int(batch_size)
    top = B * np.asarray(per_image[B], np.float64)  # (K,) seconds per call at B
    num, den = np.zeros_like(top), np.zeros_like(top)
    for m, v in per_image.items():
        if m >= B:
            continue
        t = m * np.asarray(v, np.float64)
        w = np.divide(1.0, t * t, out=np.zeros_like(t), where=t > 0)
        num += w * (top - t) * (B - m)
        den += w * float(B - m) ** 2
    b = np.divide(num, den, out=top / B, where=den > 0)
    b = np.clip(b, 0.0, top / B)
    return top - b * B, b


def fit_latency(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights ``w`` minimising the relative error ``sum(((x @ w - y) / y) ** 2)``.

    ``x`` (n, F) features, ``y`` (n,) measured seconds (> 0). Columns are scaled to unit maximum
    for the solver (scipy's NNLS), and all-zero columns get weight 0.
    """
    from scipy.optimize import nnls

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = np.abs(x).max(0)
    scale[scale == 0] = 1.0
    w, _ = nnls((x / scale) / y[:, None], np.ones(len(y)), maxiter=50 * x.shape[1])
    return w / scale


def _rel_errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean and max of |pred - y| / y, and the mean signed error (bias), over rows."""
    rel = (pred - y) / y
    return {"mean_abs": float(np.abs(rel).mean()), "max_abs": float(np.abs(rel).max()),
            "bias": float(rel.mean()), "rows": int(len(y))}


@dataclass(frozen=True)
class CallFit:
    """Which profiled batch sizes the per-call fit at ``batch_size`` uses, and a note when it is a fallback."""

    batch_size: int
    batch_sizes: tuple[int, ...]  # ascending, ending with batch_size
    note: str | None = None  # None: fitted as intended (or exact: batch 1)

    def to_dict(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes), "note": self.note}


@dataclass(frozen=True)
class DeviceProfile:
    """A profile file's content: the latency model of one supernet on one machine.

    ``data`` is the JSON object as written (see :func:`profile_supernet`); the fields below are
    parsed from it.
    """

    data: dict[str, Any]
    fingerprint: str  # of the supernet (see supernet_fingerprint)
    batch_sizes: tuple[int, ...]  # profiled batch sizes, ascending
    models: dict[int, LatencyModel]  # per batch size
    path: str | None = None  # where it was read from
    sha256: str | None = None  # of the file read

    @property
    def batch_size(self) -> int:
        """The chosen (largest) profiled batch size: what a latency search uses by default."""
        return self.batch_sizes[-1]

    def model(self, batch_size: int | None, field: str = "latency_batch_size") -> LatencyModel:
        """The model of ``batch_size`` (None: :attr:`batch_size`); LatencyError naming ``field``."""
        b = self.batch_size if batch_size is None else batch_size
        if b not in self.models:
            raise LatencyError(f"{field}: {b} was not profiled in {self.path or 'the device profile'}; "
                               f"allowed values: {list(self.batch_sizes)} (or null)")
        return self.models[b]

    def call_fit(self, batch_size: int | None, field: str = "latency_batch_size") -> CallFit:
        """The batch sizes the per-call fit at ``batch_size`` (None: :attr:`batch_size`) is made from.

        Those profiled up to it in its memory layout (version 2 profiles record it); where fewer than
        two, every profiled size up to it (a version 1 profile: batch 1 and B), with a note; where
        only it, none (per image: exact at batch 1), with a note for ``B > 1``.
        """
        B = self.model(batch_size, field).batch_size
        sizes = tuple(b for b in self.batch_sizes if b <= B)
        layouts = self.data.get("layouts") or {}
        same = tuple(b for b in sizes if str(b) in layouts and layouts[str(b)] == layouts.get(str(B)))
        if len(same) >= 2:
            return CallFit(B, same)
        where = self.path or "the device profile"
        if len(sizes) >= 2:
            if not layouts:
                why = f"{where} predates the per-call latency fit (profile version {self.data.get('version')})"
            else:
                why = f"{where} timed no smaller batch in batch {B}'s memory layout ({layouts.get(str(B))})"
            return CallFit(B, sizes, f"{why}: each stage's per-call cost is fitted from batch sizes "
                                     f"{list(sizes)}; batch 1 may run in another memory layout than the smaller "
                                     f"batches of undecided images; run enas4d-profile again for sub-batch timings")
        if B == 1:
            return CallFit(B, sizes)
        return CallFit(B, sizes, f"{where} has no batch size below {B}: predicting per image (stages on few "
                                 "undecided images are underestimated); run enas4d-profile again")

    def check_supernet(self, supernet: Mapping[str, Any], space: Mapping[str, Any],
                       field: str = "device_profile") -> None:
        """LatencyError naming ``field`` unless the profile was measured for this supernet."""
        fp = supernet_fingerprint(supernet, space)
        if fp != self.fingerprint:
            name = self.data["supernet"].get("name")
            raise LatencyError(f"{field}: {self.path or 'the profile'} was measured for supernet {name!r} "
                               f"(fingerprint {self.fingerprint}), not this checkpoint's {supernet.get('name')!r} "
                               f"({supernet.get('num_stages')} stages, fingerprint {fp}); run enas4d-profile "
                               "ckpt=<this checkpoint>")

    def summary(self) -> dict[str, Any]:
        """What a search result records about the profile (machine, torch, threads, clock, fit)."""
        d = self.data
        return {"path": self.path, "sha256": self.sha256, "machine": d["machine"], "torch": d["torch"],
                "threads": d["threads"], "clock": d["clock"], "runtime": d["runtime"]}

    @classmethod
    def from_json(cls, data: Any, path: str | None = None, sha256: str | None = None,
                  field: str = "device_profile") -> "DeviceProfile":
        """Parse and check a profile object; LatencyError naming ``field`` for anything else."""
        where = path or "the device profile"
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise LatencyError(f"{field}: {where} is not an enas4d device profile (no format "
                               f"{PROFILE_FORMAT!r}); make one with enas4d-profile")
        if data.get("version") not in READ_VERSIONS:
            raise LatencyError(f"{field}: {where} has version {data.get('version')!r}; this enas4d reads "
                               f"{list(READ_VERSIONS)}")
        try:
            if list(data["features"]["body"]) != list(BODY_FEATURES) or \
                    list(data["features"]["head"]) != list(HEAD_FEATURES):
                raise LatencyError(f"{field}: {where} uses other features than this enas4d "
                                   f"({list(BODY_FEATURES)} / {list(HEAD_FEATURES)}); profile again")
            models = {}
            for key, m in data["models"].items():
                b = int(key)
                body = np.asarray(m["body"], np.float64)
                head = np.asarray(m["head"], np.float64)
                if body.shape != (len(BODY_FEATURES),) or head.shape != (len(HEAD_FEATURES),) \
                        or not (np.isfinite(body).all() and np.isfinite(head).all()):
                    raise ValueError(f"coefficients of batch size {b}")
                models[b] = LatencyModel(b, body, head)
            fingerprint = str(data["supernet"]["fingerprint"])
            layouts = data.get("layouts")
            if layouts is not None and (not isinstance(layouts, dict)
                                        or not all(isinstance(v, str) for v in layouts.values())):
                raise ValueError(f"layouts {layouts!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise LatencyError(f"{field}: {where} is a damaged device profile ({type(e).__name__}: {e})") from e
        if not models:
            raise LatencyError(f"{field}: {where} holds no latency model")
        return cls(data, fingerprint, tuple(sorted(models)), models, path, sha256)

    @classmethod
    def load(cls, path: str | os.PathLike, field: str = "device_profile") -> "DeviceProfile":
        """Read a profile file; LatencyError naming ``field`` if it is missing or not a profile."""
        p = os.fspath(path)
        if not os.path.isfile(p):
            raise LatencyError(f"{field}: no device profile at {p!r}; make one with enas4d-profile ckpt=...")
        try:
            data = read_json(p)
        except ValueError as e:
            raise LatencyError(f"{field}: {e}") from e
        return cls.from_json(data, os.path.abspath(p), file_digest(p), field)


class LatencyCosts:
    """Predicted per-stage latencies of architectures at one profiled batch size ``B``, in the
    calibration's integer cost unit (nanoseconds).

    ``costs(arch)`` returns the per-image parts ``(body, heads)`` (``b_k``) and ``costs.calls(arch)``
    the per-call parts, per image of the batch (``a_k / B``): the pair and the ``calls`` that
    :func:`~enas4d.search.calibrate.calibrate` takes (see the module docstring). Cached per
    architecture (features need an extraction and a batch-1 pass, a few tens of milliseconds).
    """

    def __init__(self, net: nn.Module, profile: DeviceProfile, batch_size: int | None = None,
                 field: str = "latency_batch_size"):
        self.net, self.profile = net, profile
        self.model = profile.model(batch_size, field)  # the batch-B feature model
        self.batch_size = self.model.batch_size
        self.fit = profile.call_fit(self.batch_size, field)
        self._cache: dict[str, tuple[list[int], list[int], list[int], list[int]]] = {}

    def _stages(self, arch: Subnet) -> tuple[list[int], list[int], list[int], list[int]]:
        """(body, heads, body calls, head calls) of ``arch`` in integer nanoseconds per image."""
        key = arch.with_all_exits().to_json()
        if key not in self._cache:
            f = stage_features(self.net, arch)
            per = {m: self.profile.models[m].stage_seconds(f) for m in self.fit.batch_sizes}
            B = self.batch_size
            body_a, body_b = fit_per_call({m: v[0] for m, v in per.items()}, B)
            head_a, head_b = fit_per_call({m: v[1] for m, v in per.items()}, B)

            def ns(v: np.ndarray) -> list[int]:
                return [int(round(x * NS_PER_SECOND)) for x in v]

            self._cache[key] = (ns(body_b), ns(head_b), ns(body_a / B), ns(head_a / B))
        return self._cache[key]

    def __call__(self, arch: Subnet) -> tuple[list[int], list[int]]:
        """Per-image (body, heads) of ``arch`` in integer nanoseconds (exits do not matter)."""
        body, heads, _, _ = self._stages(arch)
        return body, heads

    def calls(self, arch: Subnet) -> tuple[list[int], list[int]]:
        """Per-call (body, heads) of ``arch`` in integer nanoseconds per image of a batch of ``B``."""
        _, _, body, heads = self._stages(arch)
        return body, heads

    def _cumulative(self, arch: Subnet, parts: tuple[list[int], list[int]]) -> list[float]:
        return [c / NS_PER_SECOND for c, on in zip(exit_costs(*parts, arch.exits), arch.exits) if on]

    def exit_seconds(self, arch: Subnet) -> list[float]:
        """Predicted cumulative latency of every enabled exit of ``arch`` when every image of the
        batch leaves there (what enas4d-profile times), seconds per image."""
        return [c / NS_PER_SECOND for c, on in zip(forced_exit_costs(*self(arch), arch.exits, self.calls(arch)),
                                                   arch.exits) if on]

    def exit_call_seconds(self, arch: Subnet) -> list[float]:
        """The per-call part of :meth:`exit_seconds` (stage calls divided by ``B``), per enabled exit."""
        return self._cumulative(arch, self.calls(arch))

    def expected_seconds(self, arch: Subnet, exit_rates: Sequence[float]) -> float:
        """Predicted average seconds per image at batch ``B`` when the fractions ``exit_rates`` of the
        images leave at the enabled exits of ``arch`` (:func:`~enas4d.search.calibrate.expected_cost`)."""
        return expected_cost(exit_rates, self._cumulative(arch, self(arch)), self.exit_call_seconds(arch))


# ------------------------------------------------------------------------------------ profiling
@dataclass(frozen=True)
class ProfileSettings:
    """How :func:`profile_supernet` measures (see conf/profile.yaml for each field)."""

    batch_size: int = 64  # the chosen batch size, profiled next to batch 1
    sub_batch_sizes: tuple[int, ...] | None = None  # smaller ones for the per-call fit; None: B/32, B/8 (>= 2)
    threads: int = 1  # torch intra-op threads while timing
    archs: int = 32  # architectures timed: the largest, the smallest and random ones
    holdout: float = 0.25  # fraction of them held out to report the fit error
    warmup: int = 2  # untimed calls of each (batch size, exit) before timing
    repeats: int = 5  # timed samples of each; the median counts
    min_time: float = 0.002  # seconds a timed sample lasts at least (short calls repeat inside it)
    clock: str = "wall"  # wall | cpu
    runtime: str = "torchscript"  # torchscript | eager
    seed: int = 0  # which random architectures, and the held-out split

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("threads", 1), ("archs", 2), ("warmup", 0), ("repeats", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise LatencyError(f"{name}: {v!r} not allowed; allowed values: integers >= {low}")
        if not 0 < self.holdout < 1:
            raise LatencyError(f"holdout: {self.holdout!r} not allowed; allowed values: numbers in (0, 1)")
        if not self.min_time >= 0:
            raise LatencyError(f"min_time: {self.min_time!r} not allowed; allowed values: seconds >= 0")
        if self.clock not in CLOCKS:
            raise LatencyError(f"clock: {self.clock!r} not allowed; allowed values: {list(CLOCKS)}")
        if self.runtime not in RUNTIMES:
            raise LatencyError(f"runtime: {self.runtime!r} not allowed; allowed values: {list(RUNTIMES)}")
        subs = self.sub_batch_sizes
        if subs is not None and (isinstance(subs, (str, bytes)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v < self.batch_size for v in subs)):
            shown = list(subs) if isinstance(subs, tuple) else subs
            raise LatencyError(f"sub_batch_sizes: {shown!r} not allowed; allowed values: a list of integers from 1 "
                               f"to batch_size - 1 ({self.batch_size - 1}), [] for none, or null "
                               "(batch_size/32 and batch_size/8, at least 2)")

    @property
    def sub_batches(self) -> tuple[int, ...]:
        """The batch sizes between 1 and the chosen one timed for the per-call fit."""
        B = self.batch_size
        subs = {max(2, B // 32), max(2, B // 8)} if self.sub_batch_sizes is None else set(self.sub_batch_sizes)
        return tuple(sorted(b for b in subs if 1 < b < B))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Batch 1, the sub-batch sizes and the chosen batch size."""
        return tuple(sorted({1, *self.sub_batches, self.batch_size}))


def machine_info() -> dict[str, Any]:
    """The machine a profile was measured on (name, CPU, cores, OS, Python)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}


def timer(name: str, threads: int | None) -> Callable[[], float]:
    """The timer of ``clock=``: wall time, or CPU time of this thread (1 thread) or process."""
    if name == "wall":
        return time.perf_counter
    return time.thread_time if threads == 1 else time.process_time


def _runner(model: nn.Module, runtime: str) -> Callable[[Tensor, Tensor], Any]:
    """``model`` scripted (torchscript) or as is (eager)."""
    if runtime == "eager":
        return model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        return torch.jit.script(model)


def forced_thresholds(num_exits: int, e: int) -> Tensor:
    """(E,) thresholds that make every image leave at enabled exit ``e``: +inf before it, 0 from it."""
    return torch.tensor([math.inf] * e + [0.0] * (num_exits - e), dtype=torch.float64)


@torch.no_grad()
def time_exits(run: Callable[[Tensor, Tensor], Any], num_exits: int, inputs: Mapping[int, Tensor],
               st: ProfileSettings) -> dict[int, list[float]]:
    """Median seconds per image of leaving at each enabled exit, per batch size.

    One batch size at a time (a call right after one at another batch size is several times
    slower, a cost a deployment at one batch size never pays): every exit is warmed up, then timed
    ``repeats`` times in an order that rotates between repeats (drifts of the machine fall on all
    alike); a sample repeats the call until ``min_time`` has passed and divides.
    """
    clock = timer(st.clock, st.threads)
    thr = [forced_thresholds(num_exits, e) for e in range(num_exits)]
    out: dict[int, list[float]] = {}
    for b in sorted(inputs):
        x = inputs[b]
        inner = []
        for e in range(num_exits):
            t = math.inf
            for _ in range(max(1, st.warmup)):
                t0 = clock()
                run(x, thr[e])
                t = min(t, clock() - t0)
            inner.append(max(1, min(1000, math.ceil(st.min_time / max(t, 1e-7)))))
        samples: list[list[float]] = [[] for _ in range(num_exits)]
        for r in range(st.repeats):
            for i in range(num_exits):
                e = (i + r) % num_exits
                t0 = clock()
                for _ in range(inner[e]):
                    run(x, thr[e])
                samples[e].append((clock() - t0) / inner[e])
        out[b] = [statistics.median(v) / b for v in samples]
    return out


def _architectures(space: Any, count: int, seed: int) -> list[Subnet]:
    """The largest and smallest subnets, then random ones (random exits), distinct, ``count`` in all."""
    archs: dict[str, Subnet] = {}
    for s in (space.largest(), space.smallest()):
        archs.setdefault(s.to_json(), s)
    i = 0
    while len(archs) < count and i < 50 * count:
        s = space.sample(make_generator(seed, 7, i))
        archs.setdefault(s.to_json(), s)
        i += 1
    return list(archs.values())[:count]


def profile_supernet(net: nn.Module, supernet: Mapping[str, Any], space_cfg: Mapping[str, Any],
                     mean: Sequence[float], std: Sequence[float], image_size: int, st: ProfileSettings,
                     log: Callable[[str], None] = print, checkpoint: str | None = None) -> dict[str, Any]:
    """Time ``st.archs`` architectures of ``net`` and fit a :class:`LatencyModel` per batch size.

    Args:
        net: the supernet (weights as trained: the export's BatchNorm folding uses them).
        supernet: the checkpoint's ``supernet`` entry; with ``space_cfg`` it names the supernet.
        space_cfg: the checkpoint's search space (``SearchSpace.to_config()``).
        mean: per-channel mean of [0, 1] pixels (the export's preprocessing).
        std: per-channel standard deviation.
        image_size: side of the images the model is given (resized inside to each subnet's resolution).
        st: measurement settings.
        log: progress messages.
        checkpoint: path recorded in the profile.

    Returns the profile object (see the module docstring); :meth:`DeviceProfile.from_json` reads it.
    """
    # Imported here: the export package imports the search package (budget formatting).
    from enas4d.export.early_exit import build_early_exit

    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(st.threads)
    try:
        net = net.eval()
        archs = _architectures(net.space, st.archs, st.seed)
        gen = make_generator(st.seed, 8)
        inputs = {b: torch.rand(b, int(net.in_chans), image_size, image_size, generator=gen)
                  for b in st.batch_sizes}
        records, layouts = [], {}
        for i, s in enumerate(archs):
            t0 = time.perf_counter()
            feats = stage_features(net, s)
            num_exits = sum(s.exits)
            with net.bn_unchecked():  # timing only: whose BatchNorm statistics it holds does not matter
                static = net.extract(s)
            model = build_early_exit(static, mean, std, [0.0] * num_exits, int(net.num_classes))
            for b in st.batch_sizes:  # the memory layout the runner gives a batch of b images
                cl = model.channels_last_min_batch
                layouts.setdefault(str(b), set()).add("channels_last" if 0 < cl <= b else "contiguous")
            times = time_exits(_runner(model, st.runtime), num_exits, inputs, st)
            records.append({"subnet": s.to_dict(), "features": {"body": feats.body.tolist(),
                                                                "head": feats.head.tolist()},
                            "seconds": {str(b): v for b, v in times.items()}})
            log(f"profile: {i + 1}/{len(archs)} exits {num_exits}, last exit "
                + ", ".join(f"{1e6 * times[b][-1]:.1f} us/image at batch {b}" for b in st.batch_sizes)
                + f" ({time.perf_counter() - t0:.1f}s)")
    finally:
        torch.set_num_threads(old_threads)
    fitted = fit_records(records, st.batch_sizes, st.holdout, st.seed)
    data = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(),
        "torch": torch.__version__,
        "enas4d": enas4d.__version__,  # the runner timed is this version's export (early_exit.py)
        "threads": st.threads,
        "clock": st.clock,
        "runtime": st.runtime,
        "unit": "seconds per image",
        "supernet": {**{k: supernet[k] for k in ("name", "num_classes", "num_stages", "in_chans") if k in supernet},
                     "fingerprint": supernet_fingerprint(supernet, space_cfg)},
        "checkpoint": None if checkpoint is None else os.path.abspath(checkpoint),
        "checkpoint_sha256": None if checkpoint is None else file_digest(checkpoint),
        "image_size": int(image_size),
        "batch_sizes": list(st.batch_sizes),
        "sub_batch_sizes": list(st.sub_batches),
        # memory layout of each batch size in the runner ("mixed": differs between architectures)
        "layouts": {b: v.pop() if len(v) == 1 else "mixed" for b, v in layouts.items()},
        "features": {"body": list(BODY_FEATURES), "head": list(HEAD_FEATURES)},
        "models": fitted["models"],
        "fit": fitted["fit"],
        "settings": {"archs": len(archs), "holdout": st.holdout, "warmup": st.warmup, "repeats": st.repeats,
                     "min_time": st.min_time, "seed": st.seed},
        "measurements": records,
        "seconds": round(time.perf_counter() - start, 2),
    }
    # The per-call model at the chosen batch size against the measurements it comes from.
    data["call_fit"] = call_fit_errors(DeviceProfile.from_json(data))
    return data


def fit_records(records: Sequence[Mapping[str, Any]], batch_sizes: Sequence[int], holdout: float,
                seed: int) -> dict[str, Any]:
    """Coefficients per batch size (fitted on every record) and the error of a fit on the others
    on the held-out ``holdout`` fraction of the architectures (at least one; none with < 3)."""
    rows: dict[int, list[tuple[int, np.ndarray, float]]] = {b: [] for b in batch_sizes}
    for i, rec in enumerate(records):
        f = StageFeatures(np.asarray(rec["features"]["body"]), np.asarray(rec["features"]["head"]))
        x = f.cumulative(rec["subnet"]["exits"])
        for b in batch_sizes:
            for xe, ye in zip(x, rec["seconds"][str(b)]):
                rows[b].append((i, xe, float(ye)))
    n = len(records)
    held = set()
    if n >= 3:
        order = np.random.default_rng(seed).permutation(n)
        held = set(order[:max(1, round(holdout * n))].tolist())
    models, fit = {}, {}
    for b in batch_sizes:
        idx = np.array([i for i, _, _ in rows[b]])
        x = np.stack([xe for _, xe, _ in rows[b]])
        y = np.array([ye for _, _, ye in rows[b]])
        w = fit_latency(x, y)
        models[str(b)] = {"body": w[:len(BODY_FEATURES)].tolist(), "head": w[len(BODY_FEATURES):].tolist()}
        report: dict[str, Any] = {"train": _rel_errors(x @ w, y), "held_out": None,
                                  "held_out_archs": len(held), "archs": n}
        if held:
            test = np.isin(idx, sorted(held))
            w_tr = fit_latency(x[~test], y[~test])
            report["held_out"] = _rel_errors(x[test] @ w_tr, y[test])
        fit[str(b)] = report
    return {"models": models, "fit": fit}


def call_fit_errors(profile: DeviceProfile, batch_size: int | None = None) -> dict[str, Any]:
    """How closely the per-call model at ``batch_size`` (None: the profile's) reproduces the profile's
    own measurements at the batch sizes it is fitted from: per batch size ``m``, the relative errors of
    the predicted cumulative latency of every exit of every timed architecture, each stage charged
    ``a_k / m + b_k`` per image. At ``B`` itself these are the batch-``B`` fit's training errors.

    Returns ``{"batch_size", "batch_sizes", "note", "errors": {m: {"mean_abs", "max_abs", "bias", "rows"}}}``.
    """
    fit = profile.call_fit(batch_size)
    B = fit.batch_size
    pred: dict[int, list[float]] = {m: [] for m in fit.batch_sizes}
    meas: dict[int, list[float]] = {m: [] for m in fit.batch_sizes}
    for rec in profile.data.get("measurements") or []:
        f = StageFeatures(np.asarray(rec["features"]["body"]), np.asarray(rec["features"]["head"]))
        per = {m: profile.models[m].stage_seconds(f) for m in fit.batch_sizes}
        body_a, body_b = fit_per_call({m: v[0] for m, v in per.items()}, B)
        head_a, head_b = fit_per_call({m: v[1] for m, v in per.items()}, B)
        for m in fit.batch_sizes:
            acc = 0.0
            for k, on in enumerate(rec["subnet"]["exits"]):
                acc += body_a[k] / m + body_b[k] + ((head_a[k] / m + head_b[k]) if on else 0.0)
                if on:
                    pred[m].append(acc)
            meas[m] += [float(v) for v in rec["seconds"][str(m)]]
    return {"batch_size": B, "batch_sizes": list(fit.batch_sizes), "note": fit.note,
            "errors": {str(m): _rel_errors(np.array(pred[m]), np.array(meas[m])) for m in fit.batch_sizes
                       if meas[m]}}


# --------------------------------------------------------------------------- predicted vs measured
def predicted_vs_measured(profile: str | os.PathLike | DeviceProfile, export_meta: Mapping[str, Any],
                          exit_rates: Sequence[float], measured_seconds: float, batch_size: int) -> dict[str, Any]:
    """Predicted average latency per image of an exported model next to a measured one.

    Args:
        profile: a device profile (path or loaded) of the supernet the model was exported from.
        export_meta: the export's ``subnet.json`` content (its ``supernet``, ``space`` and ``subnet``).
        exit_rates: fraction of the images leaving at each enabled exit (measured), summing to 1.
        measured_seconds: measured average seconds per image at ``batch_size``.
        batch_size: images per call of the measurement; must be a profiled batch size.

    The prediction is the per-call model's at ``batch_size`` (:class:`LatencyCosts`, the numbers
    the search calibrates with). Returns ``{"batch_size", "predicted", "measured", "ratio" (measured /
    predicted), "exit_latency" (predicted cumulative seconds per enabled exit when every image leaves
    there), "exit_call_latency" (its per-call part), "call_fit" (the batch sizes the per-call fit used
    and a note when it is a fallback), "device_profile", "device_profile_sha256", "same_machine"}``.
    Raises LatencyError (naming the argument) for a profile of another supernet, an unprofiled batch
    size or a wrong number of exit rates.
    """
    from enas4d.checkpoint import build_supernet

    prof = profile if isinstance(profile, DeviceProfile) else DeviceProfile.load(profile, field="profile")
    prof.check_supernet(export_meta["supernet"], export_meta["space"], field="profile")
    prof.model(batch_size, field="batch_size")
    net = build_supernet(dict(export_meta["supernet"])).eval()  # shapes only: weights do not matter
    s = net.space.from_dict(export_meta["subnet"])
    costs = LatencyCosts(net, prof, batch_size, field="batch_size")
    exits = costs.exit_seconds(s)
    rates = [float(r) for r in exit_rates]
    if len(rates) != len(exits) or abs(sum(rates) - 1.0) > 1e-6:
        raise LatencyError(f"exit_rates: expected {len(exits)} fractions (one per enabled exit) summing to 1, "
                           f"got {rates}")
    predicted = costs.expected_seconds(s, rates)
    here = machine_info()
    same = all(prof.data["machine"].get(k) == here[k] for k in ("hostname", "cpu", "cpu_count")) \
        and prof.data["torch"] == torch.__version__
    return {"batch_size": int(batch_size), "predicted": predicted, "measured": float(measured_seconds),
            "ratio": float(measured_seconds) / predicted, "exit_latency": [float(v) for v in exits],
            "exit_call_latency": costs.exit_call_seconds(s), "call_fit": costs.fit.to_dict(),
            "device_profile": prof.path, "device_profile_sha256": prof.sha256, "same_machine": same}


def write_profile(path: str | os.PathLike, profile: Mapping[str, Any]) -> Path:
    """Write a profile object atomically (pretty JSON); returns the path."""
    write_json(path, dict(profile))
    return Path(path)
