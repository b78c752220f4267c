"""The deployable early-exit model: an extracted subnet that really stops computing.

:class:`EarlyExitNet` wraps the stages of a :class:`~enas4d.models.static.StaticMultiStageNet`.
Given a batch of images in [0, 1] it resizes and normalises them, runs stage 1 on all of them and
stage ``k`` only on the images no earlier exit accepted, reusing the features (taps) the earlier
stages computed for those images (design.md section 3), and scatters every image's result back to
its place in the batch. An exit accepts an image when its confidence (:class:`Confidence`: max
softmax, margin or normalised entropy, as the search used) is at least the exit's threshold; the
last exit accepts every image that reaches it.

Speed (measured with tools/bench_export.py, one thread): with at least ``channels_last_min_batch``
images (default 2, or 1 for networks with depthwise convolutions, whose oneDNN kernels run about
twice as fast channels-last even on one image) the images and every feature map are
channels-last, where oneDNN's convolutions run 1.4-2x faster at batch 16-256; a single image
otherwise stays in the default layout, where its thin per-stage convolutions are faster. Every
ReLU / Hardswish works in place, and a stage drops each tap once no reader needs it
(:mod:`enas4d.models.static`), so large batches reuse warm memory instead of faulting in fresh
pages (3x faster for ``mbv3_cifar`` at batch 256). None of this changes a value.

Input check (on by default, ``set_input_check(False)`` turns it off): images must be finite and in
[0, 1] (a float image in 0..255 or an already normalised one is refused with a clear message,
instead of silently scoring like noise); it costs one min/max pass over the input.

Exits are numbered 0..E-1 over the *enabled* exits only (the order of the supernet's output list
and of ``exit_macs`` in ``subnet.json``); ``exit_stages[e]`` is the stage that exit ``e`` ends.

Everything here is TorchScript-compatible and, like :mod:`enas4d.models.static`, imports nothing
else from enas4d, so ``torch.jit.load`` of a scripted model needs only torch.
"""

# No `from __future__ import annotations`: TorchScript reads the class-level annotations below.
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from enas4d.models.static import ConvBNAct, ResidualOp, StaticMultiStageNet


class Preprocess(nn.Module):
    """[0, 1] images (N, C, H, W) -> the subnet's input: resized to R x R, then normalised."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], resolution: int):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean/std: expected equal lengths and std > 0, got {list(mean)} and {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, C, R, R) normalised (bilinear, align_corners=False)."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            # Bilinear weights sum to 1, so resizing first and normalising after equals the
            # training order (normalise, then resize inside the supernet) and is cheaper.
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False)
        return (x - self.mean) / self.std


CONFIDENCES = ("max_softmax", "margin", "entropy")
# Slack of the [0, 1] input check: float rounding of images that were normalised and un-normalised.
RANGE_TOLERANCE = 1e-3


class Confidence(nn.Module):
    """Confidence in [0, 1] of logits (N, C) -> (N,), higher = more confident.

    ``max_softmax``: top class probability; ``margin``: top minus second probability; ``entropy``:
    ``1 - H(p) / log C``. The one definition: the search scores candidates with it
    (enas4d.search.calibrate.confidence), so the exported model takes the decisions the search scored.
    """

    def __init__(self, measure: str, num_classes: int):
        super().__init__()
        if measure not in CONFIDENCES:
            raise ValueError(f"confidence: {measure!r} not allowed; allowed values: {list(CONFIDENCES)}")
        self.measure, self.num_classes = measure, num_classes
        self.log_classes = math.log(num_classes) if num_classes > 1 else 1.0

    def forward(self, logits: Tensor) -> Tensor:
        """(N, C) logits -> (N,) float32 confidence."""
        p = torch.softmax(logits.float(), 1)
        if self.measure == "max_softmax":
            conf = p.amax(1)
        elif self.num_classes == 1:
            conf = torch.ones_like(p[:, 0])
        elif self.measure == "margin":
            top = p.topk(2, 1).values
            conf = top[:, 0] - top[:, 1]
        else:
            ent = -(p * p.clamp_min(1e-12).log()).sum(1)  # (N,) nats
            conf = 1.0 - ent / self.log_classes
        return conf.clamp(0.0, 1.0)


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every eval-mode BatchNorm of a ``ConvBNAct`` into its conv (in place); returns the count."""
    n = 0
    for m in net.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv.eval(), m.bn.eval())
            m.bn = nn.Identity()
            n += 1
    return n


class EarlyExitNet(nn.Module):
    """Batched early exit over the stages of an extracted subnet.

    Args:
        static: the extracted subnet (``MultiStageSupernet.extract``); its stages are taken over.
        mean: per-channel mean of [0, 1] pixels the subnet was trained with.
        std: per-channel standard deviation, same convention.
        thresholds: one confidence threshold per enabled exit (the last one is ignored: the last
            exit always accepts). Kept in float64, as the search compares them.
        num_classes: logits per image.
        confidence: the confidence measure (see :class:`Confidence`).
        channels_last_min_batch: batches of at least this many images run channels-last (0: never;
            None: 1 for networks with depthwise convolutions, else 2; see the module docstring).
        check_range: refuse input that is not finite and in [0, 1] (``set_input_check`` changes it).
    """

    # Class-level annotations: TorchScript cannot infer the type of an empty list.
    exit_stages: List[int]  # [e] stage that exit e ends
    exit_of_stage: List[int]  # [k] exit index of stage k, -1 if its exit is disabled
    tap_read: List[List[bool]]  # [k][i] does stage k + 1 read tap i of stage k?

    def __init__(self, static: StaticMultiStageNet, mean: Sequence[float], std: Sequence[float],
                 thresholds: Sequence[float], num_classes: int, confidence: str = "max_softmax",
                 channels_last_min_batch: Optional[int] = None, check_range: bool = True):
        super().__init__()
        if channels_last_min_batch is None:
            channels_last_min_batch = 1 if has_depthwise(static) else 2
        if channels_last_min_batch < 0:
            raise ValueError(f"channels_last_min_batch: expected an integer >= 0 (0: never), got "
                             f"{channels_last_min_batch}")
        self.channels_last_min_batch = int(channels_last_min_batch)
        self.check_range = bool(check_range)
        self.range_tolerance = RANGE_TOLERANCE
        self.in_chans, self.resolution, self.num_classes = static.in_chans, static.resolution, num_classes
        if len(mean) != self.in_chans:
            raise ValueError(f"mean: expected {self.in_chans} values (one per input channel), got {len(mean)}")
        self.preprocess = Preprocess(mean, std, static.resolution)
        self.confidence = Confidence(confidence, num_classes)
        self.stages = static.stages
        exit_stages = [k for k, stage in enumerate(static.stages) if stage.has_exit]
        if not exit_stages or exit_stages[-1] != len(static.stages) - 1:
            raise ValueError("static: the last stage must have an exit")
        self.exit_stages = exit_stages
        self.exit_of_stage = [exit_stages.index(k) if k in exit_stages else -1 for k in range(len(static.stages))]
        self.num_exits = len(exit_stages)
        # Taps the next stage never reads are not compacted.
        self.tap_read = [static.stages[k + 1].taps_read(len(static.stages[k].ops))
                         for k in range(len(static.stages) - 1)] + [[]]
        thr = torch.tensor([float(t) for t in thresholds], dtype=torch.float64)
        self.register_buffer("thresholds", self._check_thresholds(thr))

    @torch.jit.unused
    def _check_thresholds(self, t: Tensor) -> Tensor:
        """Validate a (E,) threshold vector in eager mode (clear error before scripting)."""
        if t.dim() != 1 or t.shape[0] != self.num_exits or bool(torch.isnan(t).any()):
            raise ValueError(f"thresholds: expected {self.num_exits} numbers (one per enabled exit), "
                             f"got {t.tolist()}")
        return t

    @torch.jit.export
    def set_input_check(self, enabled: bool) -> None:
        """Turn the check that input pixels are finite and in [0, 1] on (the default) or off."""
        self.check_range = enabled

    def check_input(self, x: Tensor) -> Tensor:
        """Raise a clear error unless x is a floating (N, C, H, W) batch (with the input check: of
        finite values in [0, 1]); returns it as float32."""
        if x.dim() != 4:
            raise ValueError("input: expected a 4-D (N, {}, H, W) float tensor in [0, 1], got {} dims"
                             .format(self.in_chans, x.dim()))
        if x.shape[1] != self.in_chans:
            raise ValueError("input: expected {} channels (N, {}, H, W), got shape {}"
                             .format(self.in_chans, self.in_chans, x.shape))
        if not x.is_floating_point():
            raise ValueError("input: expected a floating-point tensor with values in [0, 1], got an "
                             "integer or bool tensor (for uint8 images pass x.float() / 255)")
        if self.check_range and x.numel() > 0:
            lo_t, hi_t = torch.aminmax(x)
            lo, hi = float(lo_t), float(hi_t)  # NaN fails both comparisons below
            tol = self.range_tolerance
            if not (lo >= -tol and hi <= 1.0 + tol):
                if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
                    hint = "it holds NaN or inf"
                elif hi > 1.0 and lo >= -tol and hi <= 255.0 + tol:
                    hint = "values up to 255: pass x / 255"
                elif lo < 0.0:
                    hint = "negative values: pass images in [0, 1], the model normalises them itself"
                else:
                    hint = "rescale it to [0, 1]"
                raise ValueError("input: expected finite pixel values in [0, 1], got values from {} to {} ({}; "
                                 "model.set_input_check(False) turns this check off)".format(lo, hi, hint))
        return x.float()

    def layout(self, img: Tensor) -> Tensor:
        """``img`` in the memory layout its batch size runs fastest in (see the module docstring)."""
        if self.channels_last_min_batch > 0 and img.shape[0] >= self.channels_last_min_batch:
            return img.contiguous(memory_format=torch.channels_last)
        return img

    def forward(self, x: Tensor, thresholds: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(N, C, H, W) in [0, 1] -> logits (N, num_classes) of the deciding exit, exit index (N,) int64.

        ``thresholds`` (E,) replaces the stored ones for this call (e.g. all ``inf`` forces every
        image through the last exit).
        """
        x = self.check_input(x)
        thr = self.thresholds if thresholds is None else thresholds.to(self.thresholds.device,
                                                                        self.thresholds.dtype)
        if thr.dim() != 1 or thr.shape[0] != self.num_exits:
            raise ValueError("thresholds: expected a ({},) tensor, one per enabled exit, got shape {}"
                             .format(self.num_exits, thr.shape))
        n = x.shape[0]
        out = x.new_zeros((n, self.num_classes))
        exit_index = torch.full((n,), -1, dtype=torch.long, device=x.device)
        img = self.layout(self.preprocess(x))  # (n, C, R, R) of the undecided images
        idx = torch.arange(n, device=x.device)  # their positions in the input batch
        prev: List[Tensor] = []  # their taps from the stages run so far
        k = 0
        for stage in self.stages:  # unrolled by TorchScript: no break/continue allowed
            e = self.exit_of_stage[k]
            k += 1
            if idx.shape[0] > 0:  # some images are still undecided
                logits, prev = stage(img, prev, True)  # prev is handed over: taps are released early
                if e >= 0:
                    idx, img, prev = self._decide(logits, e, thr, idx, img, prev, self.tap_read[k - 1],
                                                  out, exit_index)
        return out, exit_index

    def _decide(self, logits: Tensor, e: int, thr: Tensor, idx: Tensor, img: Tensor, prev: List[Tensor],
                read: List[bool], out: Tensor, exit_index: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Write the images exit ``e`` accepts into ``out``/``exit_index``; return the rest's state.

        ``logits`` (m, classes) are exit e's outputs for the m undecided images at input positions
        ``idx`` (m,), with their resized images ``img`` and taps ``prev`` (``read[i]``: the next
        stage reads ``prev[i]``).
        """
        if e == self.num_exits - 1:  # the last exit accepts everything
            done_all = True
        else:
            done = self.confidence(logits).double() >= thr[e]  # (m,), compared in float64
            sel = torch.nonzero(done)[:, 0]  # its length is the count: no separate sum() sync
            n_done = sel.shape[0]
            if n_done == 0:
                return idx, img, prev
            done_all = n_done == idx.shape[0]
            if not done_all:
                keep = torch.nonzero(~done)[:, 0]
                pos = idx[sel]
                out.index_copy_(0, pos, logits[sel])
                exit_index.index_fill_(0, pos, e)
                # Compact the batch: later stages see only the undecided images and their taps
                # (indexing keeps the memory layout; index_select would not).
                taps: List[Tensor] = []
                for i in range(len(prev)):
                    # A tap the next stage never reads is handed on as is (its batch is stale).
                    taps.append(prev[i][keep] if read[i] else prev[i])
                return idx[keep], img[keep], taps
        out.index_copy_(0, idx, logits)
        exit_index.index_fill_(0, idx, e)
        none: List[Tensor] = []  # no stage runs after this: no taps to hand on
        return idx[:0], img[:0], none

    @torch.jit.export
    def all_exits(self, x: Tensor) -> List[Tensor]:
        """Logits of every enabled exit for every image (no early exit), like the supernet's output."""
        img = self.layout(self.preprocess(self.check_input(x)))
        prev: List[Tensor] = []
        outs: List[Tensor] = []
        k = 0
        for stage in self.stages:
            logits, prev = stage(img, prev, True)
            if self.exit_of_stage[k] >= 0:
                outs.append(logits)
            k += 1
        return outs


def activations_in_place(net: nn.Module) -> int:
    """Make the ReLU / Hardswish of every ``ConvBNAct`` and ``ResidualOp`` of ``net`` work in place
    (modifies ``net``); returns how many.

    Only those: their activation reads a tensor the same module has just created (a convolution's
    or BatchNorm's output, or a residual sum), never a tap that other ops still read; an activation
    elsewhere (e.g. of a graph-transformed network, on a view of a tap) is left as it is. At large
    batches this halves the fresh activation memory per layer, and with it the page faults.
    """
    n = 0
    for m in net.modules():
        if isinstance(m, (ConvBNAct, ResidualOp)) and isinstance(m.act, (nn.ReLU, nn.Hardswish)):
            m.act.inplace = True
            n += 1
    return n


def has_depthwise(net: nn.Module) -> bool:
    """Whether ``net`` holds a depthwise convolution (one group per input channel, more than one)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in net.modules())


def build_early_exit(static: StaticMultiStageNet, mean: Sequence[float], std: Sequence[float],
                     thresholds: Sequence[float], num_classes: int, confidence: str = "max_softmax",
                     fold_bn: bool = True, channels_last_min_batch: Optional[int] = None,
                     check_range: bool = True) -> EarlyExitNet:
    """An eval-mode :class:`EarlyExitNet` over ``static`` (BatchNorm folded into convs unless told)."""
    static = static.eval()
    if fold_bn:
        fold_batchnorm(static)
    activations_in_place(static)
    model = EarlyExitNet(static, mean, std, thresholds, num_classes, confidence, channels_last_min_batch,
                         check_range).eval()
    model.requires_grad_(False)  # inference only: no autograd graph in outputs
    return model
