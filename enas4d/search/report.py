"""Search outputs: pareto.csv, pareto.png and the final rich table (files written atomically)."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from enas4d.search.budget import format_cost, format_macs
from enas4d.search.result import SearchResult
from enas4d.utils.files import write_atomic

__all__ = ["write_pareto_csv", "plot_pareto", "print_summary"]


def write_pareto_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Atomic CSV of front rows: kind, expected_macs (or expected_latency, seconds), val_accuracy, subnet (JSON)."""
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["kind", "expected_macs", "val_accuracy", "subnet"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_atomic(path, buf.getvalue().encode())


def plot_pareto(path: str | os.PathLike, dynamic: np.ndarray, static: np.ndarray, candidates: np.ndarray,
                budget: float, chosen: tuple[float, float] | None, static_best: tuple[float, float] | None,
                title: str, unit: str = "macs") -> None:
    """Accuracy vs average cost (MACs, or ``unit="seconds"``: predicted latency): fronts, candidates, choices."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if len(candidates):
        ax.scatter(candidates[:, 0], candidates[:, 1] * 100, s=10, c="0.7", label="candidates (at budget)")
    if len(dynamic):
        ax.step(dynamic[:, 0], dynamic[:, 1] * 100, where="post", color="C0", label="dynamic front (early exit)")
    if len(static):
        ax.step(static[:, 0], static[:, 1] * 100, where="post", color="C1", marker="o", ms=3,
                label="static front (single exit)")
    ax.axvline(budget, color="0.3", ls="--", lw=1, label=f"budget {format_cost(budget, unit)}")
    if chosen is not None:
        ax.scatter([chosen[0]], [chosen[1] * 100], marker="*", s=160, color="C0", zorder=5, label="chosen dynamic")
    if static_best is not None:
        ax.scatter([static_best[0]], [static_best[1] * 100], marker="D", s=50, color="C1", zorder=5,
                   label="best static")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: format_cost(v, unit)))
    ax.set_xlabel("predicted average latency per image" if unit == "seconds" else "average MACs per image")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def print_summary(result: SearchResult, front_rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """The final table: chosen dynamic subnet vs best static one, exit usage, and a front sample."""
    console = console or Console()
    unit = result.budget_unit  # "macs" or "seconds"
    t = Table(title=f"search result: budget {format_cost(result.budget, unit)}"
                    f"{'' if unit == 'seconds' else ' MACs'}/image ({result.num_val_images} validation images)")
    for col in ("", "val acc", "avg MACs", "exit rates", "exit MACs (cumulative)", "thresholds"):
        t.add_column(col, justify="right" if col in ("val acc", "avg MACs") else "left")
    t.add_row("dynamic (chosen)", f"{100 * result.val_accuracy:.2f}%", format_macs(result.expected_macs),
              " ".join(f"{r:.2f}" for r in result.exit_rates),
              " ".join(format_macs(m) for m in result.exit_macs),
              " ".join(f"{x:.3f}" for x in result.thresholds))
    cf = result.cross_fitted
    if cf is not None:
        # Thresholds fitted on one half of the validation images, scored on the other (both ways).
        cost = cf.expected_latency if unit == "seconds" else cf.expected_macs
        t.add_row("dynamic (cross-fitted)", f"{100 * cf.val_accuracy:.2f}%",
                  format_cost(cost, unit) + (" (latency)" if unit == "seconds" else ""), "-", "", "")
    sb = result.static_best
    if sb is not None:
        t.add_row("static (best)", f"{100 * sb.val_accuracy:.2f}%", format_macs(sb.macs), "1.00",
                  format_macs(sb.macs), "-")
    else:
        t.add_row("static (best)", "-", "-", "none found within budget", "", "")
    console.print(t)
    lat = result.latency
    if lat is not None:
        console.print(f"predicted latency: {format_cost(lat.expected, 'seconds')}/image at batch "
                      f"{lat.batch_size} (exits {' '.join(format_cost(v, 'seconds') for v in lat.exit_latency)}) on "
                      f"{(lat.machine or {}).get('hostname')}, {lat.threads} thread(s), by {lat.device_profile}")
    cost_key = "expected_latency" if unit == "seconds" else "expected_macs"  # of the front rows
    dyn = [r for r in front_rows if r["kind"] == "dynamic"]
    stat = [r for r in front_rows if r["kind"] == "static"]
    if dyn or stat:
        f = Table(title="Pareto fronts (sample; all rows in pareto.csv)")
        f.add_column("avg latency (predicted)" if unit == "seconds" else "avg MACs", justify="right")
        f.add_column("dynamic acc", justify="right")
        f.add_column("best static acc at <= latency" if unit == "seconds" else "best static acc at <= MACs",
                     justify="right")
        idx = np.unique(np.linspace(0, len(dyn) - 1, min(8, len(dyn))).round().astype(int)) if dyn else []
        for i in idx:
            cost = dyn[i][cost_key]
            st = [r["val_accuracy"] for r in stat if r[cost_key] <= cost]
            f.add_row(format_cost(cost, unit), f"{100 * dyn[i]['val_accuracy']:.2f}%",
                      f"{100 * max(st):.2f}%" if st else "-")
        console.print(f)
