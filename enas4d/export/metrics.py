"""What an early-exit model does on a dataset: accuracy, exits taken, measured MACs, throughput.

Every function takes the model as a ``predict(x, thresholds) -> (logits, exit_index)`` callable
(the TorchScript module, the eager :class:`~enas4d.export.early_exit.EarlyExitNet`, or the
onnxruntime runner wrapped to torch tensors), so all backends are measured the same way.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

Predict = Callable[[Tensor, Optional[Tensor]], tuple[Tensor, Tensor]]


class EmptyDatasetError(ValueError):
    """:func:`exit_report` was given no images."""


def to_unit(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo a datamodule's normalisation: (N, C, H, W) normalised -> pixels in [0, 1]."""
    m = torch.tensor(list(mean), dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype).view(1, -1, 1, 1)
    return x * s + m


@torch.no_grad()
def exit_report(predict: Predict, batches: Iterable[tuple[Tensor, Tensor]], exit_macs: Sequence[int],
                all_exits: Callable[[Tensor], list[Tensor]] | None = None) -> dict[str, Any]:
    """Run ``predict`` over ``(x in [0, 1], y)`` batches and summarise the exits it took.

    Returns a dict with ``num_images``, ``accuracy``, ``avg_macs`` (mean of the cumulative MACs
    of the exit each image took), ``exit_histogram`` (images per exit), ``exit_rates`` and
    ``exit_accuracy`` (accuracy of the images each exit decided; None where it decided none).
    With ``all_exits`` (x -> logits of every exit for every image) also ``all_exits_accuracy``:
    each exit's accuracy had every image used it.
    """
    E = len(exit_macs)
    counts = torch.zeros(E, dtype=torch.long)
    correct = torch.zeros(E, dtype=torch.long)
    correct_all = torch.zeros(E, dtype=torch.long)
    for x, y in batches:
        if all_exits is not None:
            for e, logits in enumerate(all_exits(x)):
                correct_all[e] += int((logits.argmax(1) == y).sum())
        logits, ex = predict(x, None)
        if bool((ex < 0).any()) or bool((ex >= E).any()):
            raise RuntimeError(f"model returned exit indices outside 0..{E - 1}: {ex.unique().tolist()}")
        counts += torch.bincount(ex, minlength=E)
        correct += torch.bincount(ex, weights=(logits.argmax(1) == y).double(), minlength=E).round().long()
    n = int(counts.sum())
    if n == 0:
        raise EmptyDatasetError("exit_report: the dataset is empty")
    macs = torch.tensor([float(m) for m in exit_macs], dtype=torch.float64)
    report: dict[str, Any] = {
        "num_images": n,
        "accuracy": float(correct.sum()) / n,
        "avg_macs": float((counts.double() * macs).sum()) / n,
        "exit_histogram": counts.tolist(),
        "exit_rates": (counts.double() / n).tolist(),
        "exit_accuracy": [float(c) / int(k) if int(k) else None for c, k in zip(correct, counts)],
    }
    if all_exits is not None:
        report["all_exits_accuracy"] = (correct_all.double() / n).tolist()
    return report


@torch.no_grad()
def throughput(predict: Predict, images: Tensor, batch_size: int, num_exits: int, exit_macs: Sequence[int],
               repeats: int = 3, warmup: int = 1, reference: Callable[[Tensor], Any] | None = None,
               reference_macs: float | None = None, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Images per second of early exit vs the same model forced through the last exit (and a reference).

    ``images`` (M, C, H, W) in [0, 1] are run in batches of ``batch_size`` (the last partial batch
    is dropped) with the stored thresholds and with every threshold at +inf (each image goes
    through every stage), and, given a ``reference`` (x -> anything; e.g. the plain static network
    a user would deploy instead, of ``reference_macs`` MACs per image), through it too. The modes
    alternate batch by batch (in rotating order), so load from other processes falls on all alike;
    times are summed over ``repeats`` passes after ``warmup`` passes. ``ratio`` is the wall-clock
    speed-up divided by the MACs reduction (1.0: time saved in proportion to MACs saved);
    ``ratio_per_repeat`` shows its spread. With a reference also ``reference_ips``,
    ``speedup_vs_reference`` (early exit vs reference), ``macs_reduction_vs_reference`` and
    ``ratio_vs_reference`` (their quotient). ``clock``: the timer (wall clock unless told; e.g.
    ``time.thread_time``).
    """
    n = (images.shape[0] // batch_size) * batch_size
    if n == 0:
        raise ValueError(f"throughput: {images.shape[0]} images are fewer than batch_size={batch_size}")
    if reference is not None and (reference_macs is None or reference_macs <= 0):
        raise ValueError(f"reference_macs: expected the reference's MACs per image (> 0), got {reference_macs}")
    batches = [images[i:i + batch_size] for i in range(0, n, batch_size)]
    force_last = torch.full((num_exits,), float("inf"), dtype=torch.float64)
    macs = torch.tensor([float(m) for m in exit_macs], dtype=torch.float64)
    exits = torch.cat([predict(b, None)[1] for b in batches])  # also the first warm-up pass
    avg_macs = float(macs[exits].mean())
    macs_reduction = float(macs[-1]) / avg_macs
    runs: list[Callable[[Tensor], Any]] = [lambda b: predict(b, None), lambda b: predict(b, force_last)]
    if reference is not None:
        runs.append(reference)
    totals: list[list[float]] = [[] for _ in runs]  # [mode][repeat] seconds
    for r in range(warmup + repeats):
        spent = [0.0] * len(runs)
        for i, b in enumerate(batches):
            for j in range(len(runs)):
                mode = (i + r + j) % len(runs)
                t0 = clock()
                runs[mode](b)
                spent[mode] += clock() - t0
        if r >= warmup:
            for mode, t in enumerate(spent):
                totals[mode].append(t)
    ips = [n * repeats / sum(t) for t in totals]
    speedup = ips[0] / ips[1]
    row: dict[str, Any] = {
        "batch_size": batch_size,
        "images": n,
        "repeats": repeats,
        "early_exit_ips": ips[0],
        "last_exit_ips": ips[1],
        "speedup": speedup,
        "avg_macs": avg_macs,
        "macs_reduction": macs_reduction,
        "ratio": speedup / macs_reduction,
        "ratio_per_repeat": [(tl / te) / macs_reduction for te, tl in zip(totals[0], totals[1])],
    }
    if reference is not None:
        assert reference_macs is not None
        row["reference_ips"] = ips[2]
        row["speedup_vs_reference"] = ips[0] / ips[2]
        row["macs_reduction_vs_reference"] = reference_macs / avg_macs
        row["ratio_vs_reference"] = row["speedup_vs_reference"] / row["macs_reduction_vs_reference"]
    return row


@torch.no_grad()
def latency(predict: Predict, images: Tensor, batch_size: int, num_exits: int, repeats: int = 3, warmup: int = 1,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Average seconds per image of the early exit alone at ``batch_size``, as a deployment runs it.

    Unlike :func:`throughput`, which alternates its modes batch by batch (so each call finds the
    caches full of another model), the model runs alone, pass after pass, as enas4d-profile times
    it: ``warmup`` untimed passes, then ``repeats`` timed passes over ``images`` (M, C, H, W) in [0, 1]
    in batches of ``batch_size`` (the last partial batch is dropped); the median pass counts.

    Returns ``{"batch_size", "images", "repeats", "seconds"`` (median pass, seconds per image),
    ``"per_pass"`` (seconds per image of every timed pass), ``"exit_rates"`` (fraction of the timed
    images leaving at each exit)}.
    """
    n = (images.shape[0] // batch_size) * batch_size
    if n == 0:
        raise ValueError(f"latency: {images.shape[0]} images are fewer than batch_size={batch_size}")
    batches = [images[i:i + batch_size] for i in range(0, n, batch_size)]
    exits = torch.cat([predict(b, None)[1] for b in batches])  # also the first warm-up pass
    for _ in range(warmup - 1):
        for b in batches:
            predict(b, None)
    per_pass = []
    for _ in range(repeats):
        spent = 0.0
        for b in batches:
            t0 = clock()
            predict(b, None)
            spent += clock() - t0
        per_pass.append(spent / n)
    return {"batch_size": batch_size, "images": n, "repeats": repeats, "seconds": statistics.median(per_pass),
            "per_pass": per_pass, "exit_rates": (torch.bincount(exits, minlength=num_exits).double() / n).tolist()}
