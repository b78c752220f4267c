"""Rich tables of an exported model: its exits on a dataset, and its throughput."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from enas4d.search.budget import format_macs


def pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for None."""
    return "-" if v is None else f"{100 * v:.1f}%"


def exit_table(meta: dict[str, Any], report: dict[str, Any], title: str) -> Table:
    """One row per enabled exit: stage, threshold, cumulative MACs, images, exit rate, accuracy.

    ``meta`` is a ``subnet.json`` content, ``report`` an :func:`enas4d.export.metrics.exit_report`.
    """
    t = Table(title=title)
    for col in ("exit", "stage", "threshold", "cumulative MACs", "images", "exit rate", "accuracy of its exits"):
        t.add_column(col, justify="right")
    E = len(meta["exit_stages"])
    for e in range(E):
        thr = "accepts all" if e == E - 1 else f"{meta['thresholds'][e]:.4f}"
        t.add_row(str(e), str(meta["exit_stages"][e]), thr, format_macs(meta["exit_macs"][e]),
                  str(report["exit_histogram"][e]), pct(report["exit_rates"][e]), pct(report["exit_accuracy"][e]))
    reduction = meta["exit_macs"][-1] / report["avg_macs"]
    t.add_section()
    t.add_row("all", "", "", f"{format_macs(report['avg_macs'])} avg ({reduction:.2f}x less)",
              str(report["num_images"]), "", pct(report["accuracy"]))
    return t


def throughput_table(rows: list[dict[str, Any]], target: float) -> Table:
    """One row per batch size: early-exit and last-exit images/s, speed-up, MACs reduction, ratio."""
    t = Table(title=f"throughput (images/s; ratio = speed-up / MACs reduction, target >= {target})")
    for col in ("batch", "early exit", "forced last exit", "speed-up", "MACs reduction", "ratio"):
        t.add_column(col, justify="right")
    for r in rows:
        ok = r["ratio"] >= target
        t.add_row(str(r["batch_size"]), f"{r['early_exit_ips']:.1f}", f"{r['last_exit_ips']:.1f}",
                  f"{r['speedup']:.2f}x", f"{r['macs_reduction']:.2f}x",
                  f"[{'green' if ok else 'red'}]{r['ratio']:.2f}[/]")
    return t
