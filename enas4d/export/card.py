"""The model card: the ``README.md`` of an export folder, written from its ``subnet.json`` content."""

from __future__ import annotations

import json
from typing import Any

from enas4d.export.report import pct
from enas4d.search.budget import format_macs, format_seconds


def model_card(meta: dict[str, Any]) -> str:
    """The README.md of an export folder, from its ``subnet.json`` content."""
    lines = _header(meta) + _validation(meta) + _latency(meta) + _exit_table(meta) + _usage(meta)
    return "\n".join(lines)


def _header(meta: dict[str, Any]) -> list[str]:
    """Title, provenance and shape of the model, up to the exits' heading."""
    return [
        f"# Early-exit model: {meta['supernet']['name']} subnet on {meta['data']['name']}",
        "",
        f"Exported by enas4d {meta['enas4d_version']} on {meta['created']} from `{meta['checkpoint']}`"
        + (f" with search result `{meta['result']}`." if meta.get("result") else "."),
        f"Input resolution {meta['resolution']}x{meta['resolution']}, {meta['num_classes']} classes, "
        f"{len(meta['exit_stages'])} enabled exits over {meta['supernet']['num_stages']} stages; BatchNorm "
        + ("folded into the convolutions." if meta["fold_bn"] else "kept as separate layers."),
        "",
        "## Exits",
        "",
    ]


def _validation(meta: dict[str, Any]) -> list[str]:
    """The measured accuracy and average MACs (nothing without a validation report)."""
    val = meta.get("validation")
    if val is None:
        return []
    return [f"Measured on the validation split ({val['num_images']} images): accuracy "
            f"**{pct(val['accuracy'])}** at **{format_macs(val['avg_macs'])} MACs** per image on "
            f"average, {meta['exit_macs'][-1] / val['avg_macs']:.2f}x fewer than the last exit "
            f"({format_macs(meta['exit_macs'][-1])}).", ""]


def _latency(meta: dict[str, Any]) -> list[str]:
    """The search's predicted latency (nothing from a search without a device profile)."""
    lat = meta.get("latency")
    if lat is None:
        return []
    where = ", ".join(str(v) for v in ((lat.get("machine") or {}).get("hostname"),
                                       f"{lat.get('threads')} thread(s)" if lat.get("threads") else None,
                                       lat.get("runtime")) if v)
    budget = "" if lat["budget"] is None else f" for a budget of {format_seconds(lat['budget'])}"
    return [f"Predicted latency (enas4d-search{budget}): **{format_seconds(lat['expected'])} per image** on "
            f"average at batch {lat['batch_size']} on the profiled machine ({where}; device profile "
            f"`{lat['device_profile']}`), cumulative per exit "
            f"{', '.join(format_seconds(v) for v in lat['exit_latency'])}. `enas4d-evaluate` measures it.", ""]


def _exit_table(meta: dict[str, Any]) -> list[str]:
    """One row per enabled exit: stage, threshold, cumulative MACs and the validation numbers."""
    val = meta.get("validation")
    lines = ["| exit | stage | threshold | cumulative MACs | exit rate | accuracy of its exits | "
             "accuracy on all images |", "|---|---|---|---|---|---|---|"]
    for e, (k, thr, macs) in enumerate(zip(meta["exit_stages"], meta["thresholds"], meta["exit_macs"])):
        last = e == len(meta["exit_stages"]) - 1
        rate = acc = acc_all = None
        if val is not None:
            rate, acc, acc_all = val["exit_rates"][e], val["exit_accuracy"][e], val["all_exits_accuracy"][e]
        lines.append(f"| {e} | {k} | {'(accepts all)' if last else f'{thr:.4f}'} | {format_macs(macs)} | "
                     f"{pct(rate)} | {pct(acc)} | {pct(acc_all)} |")
    return lines


_PT2_USAGE = [  # the torch.export programs (pt2=true)
    "torch.export programs (needs torch and numpy): `python pt2_runner.py . images.npy`, or",
    "",
    "```python",
    "from pt2_runner import Pt2EarlyExit",
    "logits, exit_index = Pt2EarlyExit('.')(x)  # tensors (or numpy arrays) in and out",
    "```",
    "",
]


def _usage(meta: dict[str, Any]) -> list[str]:
    """The exit rule, how to run the model, the subnet and the class names."""
    return [
        "",
        f"An exit accepts an image when its {meta['confidence']} confidence is at least the threshold; stage k",
        "runs only on the images no earlier exit accepted, reusing their features.",
        "",
        "## Use",
        "",
        "TorchScript (needs only torch):",
        "",
        "```python",
        "import torch",
        "m = torch.jit.load('model.ts')",
        f"x = torch.rand(8, {meta['in_chans']}, {meta['resolution']}, {meta['resolution']})  "
        "# float (N, C, H, W) in [0, 1]; resized inside",
        "logits, exit_index = m(x)          # (N, classes), (N,) int64",
        f"logits, exit_index = m(x, torch.tensor({meta['thresholds']}))  # other thresholds",
        "```",
        "",
        "onnxruntime (needs numpy and onnxruntime): `python onnx_runner.py . images.npy`, or",
        "",
        "```python",
        "from onnx_runner import OnnxEarlyExit",
        "logits, exit_index = OnnxEarlyExit('.')(x.numpy())",
        "```",
        "",
        *(_PT2_USAGE if "pt2" in meta["files"] else []),
        "## Subnet",
        "",
        "```json",
        json.dumps(meta["subnet"]),
        "```",
        "",
        f"Class names: {', '.join(meta['class_names'])}.",
        "",
    ]
