"""CIFAR-10 reference (issue 12): the static ResNet-20 yardstick against the enas4d S2DNAS path,
trained under the same wall-clock budget in the same run, then searched, exported and evaluated.

    python tools/cifar10_reference.py                 # make cifar10-reference (about 100 minutes on 2 cores)
    python tools/cifar10_reference.py --quick         # make cifar10-reference QUICK=1 (smoke test, < 15 min)

Steps (each skipped when its output exists, resumed from its last checkpoint when interrupted):

1. **plan**: time a training step of each path side by side (static ResNet-20; S2DNAS fine-tuning:
   the sandwich step of the 3-stage supernet plus its static teacher) and split the budget: the
   static baseline trains ``E`` epochs (``--epochs``); the S2DNAS path trains its static source for
   ``source_fraction * E`` epochs and fine-tunes for the rest of the same time (the remaining
   static epochs times the measured step-time ratio). The wall-clock each training really took is
   reported next to its result. Written once to
   ``plan.json`` (a resumed run keeps it).
2. **train**: the baseline and the S2DNAS path run at the same time, one thread each.
3. **search** the S2DNAS supernet at 25%, 50% and 75% of the static ResNet-20's MACs; the static
   network itself at its own size (its export is the baseline a user would deploy).
4. **export** each result with real early exit and **evaluate** it (TorchScript, validation split).
5. ``results.csv``, ``results.md`` and ``results.png`` (accuracy versus average MACs).

Every figure is on the validation split carved out of the shared 45,000 images (the same split for
all runs: same data seed). Commands run through the console scripts, exactly as a user runs them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FRACTIONS = (0.25, 0.5, 0.75)  # search budgets, as fractions of the static ResNet-20's MACs


class ReferenceError(RuntimeError):
    """A step that failed; the message names it and its log."""


# ------------------------------------------------------------------------ helpers
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(cmd: list[str], log: Path, threads: int = 1) -> float:
    """Run ``cmd`` with its output in ``log``; returns its wall-clock seconds; a failure raises."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise ReferenceError(f"{cmd[0]} failed (exit {rc}): {tail[0]} (log: {log})")
    return time.perf_counter() - t0


class State:
    """``state.json``: which steps are done and how long each took (survives interruptions)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, step: str) -> bool:
        """Has ``step`` finished?"""
        return step in self.data

    def finish(self, step: str, seconds: float, **extra: Any) -> None:
        """Record ``step`` as finished (seconds accumulate over resumed attempts)."""
        self.data[step] = {"seconds": seconds + self.data.get(f"{step}.partial", 0.0), **extra}
        self.data.pop(f"{step}.partial", None)
        write_atomic(self.path, json.dumps(self.data, indent=2))

    def partial(self, step: str, seconds: float) -> None:
        """Add the seconds of an interrupted attempt."""
        self.data[f"{step}.partial"] = self.data.get(f"{step}.partial", 0.0) + seconds
        write_atomic(self.path, json.dumps(self.data, indent=2))


# --------------------------------------------------------------------------- plan
EXPERIMENTS = {"split": "s2dnas_resnet20_cifar10", "grow": "s2dnas_grow_resnet20_cifar10"}  # --transform


def experiment_of(transform: str) -> str:
    """The enas4d-train experiment of the S2DNAS fine-tuning for ``--transform``."""
    return EXPERIMENTS[transform]


def time_steps(n_steps: int, transform: str = "split", finetune_set: list[str] | None = None) -> tuple[float, float]:
    """Median seconds of one training step: (static ResNet-20, S2DNAS fine-tuning as its experiment
    config and ``finetune_set`` overrides set it up), interleaved."""
    import statistics
    from functools import partial

    import torch
    from omegaconf import OmegaConf

    from enas4d.models import create_supernet
    from enas4d.training.module import SupernetModule
    from enas4d.transform.sources import training_from_config, transformed_from_config

    exp = OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment_of(transform)}.yaml")
    exp = OmegaConf.merge(exp, OmegaConf.from_dotlist(list(finetune_set or [])))
    sn = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "supernet" / "from_static.yaml"), exp.supernet,
                         {"weights": None})  # random weights: only the step's time counts
    torch.set_num_threads(1)
    static = create_supernet("resnet20_static", num_classes=10, num_stages=1)
    net, teacher = transformed_from_config(sn, 10, 3, 32)  # as enas4d-train builds them
    meta = {"name": "cifar10", "cfg": {}, "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": list("0123456789"),
            "image_size": 32}
    sgd = partial(torch.optim.SGD, lr=0.01, momentum=0.9)
    paths = {"static": SupernetModule(static, sgd, None, meta, n_random=1),
             "s2dnas": SupernetModule(net, sgd, None, meta, n_random=int(exp.module.n_random),
                                      teacher_net=teacher.eval(), **training_from_config(sn, net))}
    opts = {k: sgd(m.net.parameters()) for k, m in paths.items()}
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    times: dict[str, list[float]] = {k: [] for k in paths}
    for step in range(n_steps + 2):
        for key, module in paths.items():
            t0 = time.perf_counter()
            loss, _ = module.sandwich_loss(x, y, module.sampler.sample(step))
            opts[key].zero_grad()
            loss.backward()
            opts[key].step()
            if step >= 2:  # warm-up steps do not count
                times[key].append(time.perf_counter() - t0)
    return statistics.median(times["static"]), statistics.median(times["s2dnas"])


def make_plan(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The epochs of each training under the same wall-clock budget (``plan.json``, written once)."""
    path = out / "plan.json"
    if path.is_file():
        return json.loads(path.read_text())
    t_static, t_s2dnas = time_steps(3 if args.quick else 10, args.transform, args.finetune_set)
    epochs = args.epochs
    source_epochs = max(1, round(args.source_fraction * epochs))
    # The fine-tuning gets the static epochs the source did not use, converted at the measured step-time ratio.
    ft_epochs = max(1, round((epochs - source_epochs) * t_static / t_s2dnas))
    plan = {"static_step_s": round(t_static, 4), "s2dnas_step_s": round(t_s2dnas, 4), "static_epochs": epochs,
            "source_epochs": source_epochs, "finetune_epochs": ft_epochs, "source_fraction": args.source_fraction,
            "transform": args.transform, "finetune_set": args.finetune_set, "quick": args.quick}
    write_atomic(path, json.dumps(plan, indent=2))
    return plan


# -------------------------------------------------------------------------- steps
def train_cmd(run_dir: Path, overrides: list[str], args: argparse.Namespace) -> list[str]:
    """enas4d-train in ``run_dir``, resuming from its last checkpoint when there is one."""
    cmd = [str(BIN / "enas4d-train"), f"hydra.run.dir={run_dir}", f"data.path={args.data}",
           "callbacks.rich_progress_bar=null", "summary=false", *overrides]
    if args.gpu:
        cmd += ["trainer=gpu", "torch_threads=null", "data.num_workers=4"]
    if args.quick:
        cmd += [f"trainer.limit_train_batches={args.train_batches}", "trainer.limit_val_batches=2",
                "module.bn_images=256"]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        cmd.append(f"ckpt_path={last}")
    return cmd


def train_both(out: Path, plan: dict[str, Any], state: State, args: argparse.Namespace) -> None:
    """The static baseline and the S2DNAS path (source, then fine-tuning), in parallel."""
    import threading

    source_ckpt = out / "s2dnas_source" / "checkpoints" / "last.ckpt"
    chains = {
        "static": [("static", ["experiment=cifar10_static", f"trainer.max_epochs={plan['static_epochs']}"])],
        "s2dnas": [("s2dnas_source", ["experiment=cifar10_static", f"trainer.max_epochs={plan['source_epochs']}"]),
                   ("s2dnas", [f"experiment={experiment_of(plan.get('transform', 'split'))}",
                               f"supernet.weights={source_ckpt}", f"trainer.max_epochs={plan['finetune_epochs']}",
                               *plan.get("finetune_set", [])])],
    }
    errors: list[BaseException] = []

    def chain(steps: list[tuple[str, list[str]]]) -> None:
        for name, overrides in steps:
            if state.done(f"train_{name}"):
                continue
            t0 = time.perf_counter()
            try:
                secs = run(train_cmd(out / name, overrides, args), out / "logs" / f"train_{name}.log")
            except BaseException as e:
                state.partial(f"train_{name}", time.perf_counter() - t0)
                errors.append(e)
                return
            state.finish(f"train_{name}", secs)

    threads = [threading.Thread(target=chain, args=(c,)) for c in chains.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise ReferenceError(str(errors[0]))


def search_export_evaluate(out: Path, name: str, ckpt: Path, budget: str, state: State,
                           args: argparse.Namespace) -> None:
    """enas4d-search at ``budget``, enas4d-export of its result, enas4d-evaluate of the export."""
    base, logs = out / "runs" / name, out / "logs"
    if not state.done(f"search_{name}"):
        extra = ["evaluations=6", "static_evaluations=4", "population=4", "bn.images=200"] if args.quick else []
        secs = run([str(BIN / "enas4d-search"), f"ckpt={ckpt}", f"budget={budget}", "threads=1", "progress=false",
                    f"cache_dir={out / 'search_cache'}", f"hydra.run.dir={base}/search", *extra],
                   logs / f"search_{name}.log")
        state.finish(f"search_{name}", secs)
    if not state.done(f"export_{name}"):
        secs = run([str(BIN / "enas4d-export"), f"ckpt={ckpt}", f"result={base}/search/result.json",
                    f"out={base}/export", "overwrite=true", "threads=1", f"hydra.run.dir={base}/export-log"],
                   logs / f"export_{name}.log")
        state.finish(f"export_{name}", secs)
    if not state.done(f"evaluate_{name}"):
        extra = ["timing_images=256"] if args.quick else []
        secs = run([str(BIN / "enas4d-evaluate"), f"model={base}/export", "threads=1",
                    f"hydra.run.dir={base}/evaluate", *extra], logs / f"evaluate_{name}.log")
        state.finish(f"evaluate_{name}", secs)


# ------------------------------------------------------------------------ results
def static_macs(ckpt: Path) -> int:
    """MACs per image of the static network in ``ckpt``."""
    from enas4d.checkpoint import load_supernet

    net, _ = load_supernet(ckpt)
    return int(net.macs(net.space.largest())[-1])


def collect(out: Path, plan: dict[str, Any], state: State, r20_macs: int) -> list[dict[str, Any]]:
    """One row per searched/evaluated model."""
    rows = []
    for name in ["static", *[f"s2dnas_{int(f * 100)}" for f in FRACTIONS]]:
        base = out / "runs" / name
        result = json.loads((base / "search" / "result.json").read_text())
        metrics = json.loads((base / "export" / "metrics.json").read_text())
        sb = result.get("static_best") or {}
        cf = result.get("cross_fitted") or {}
        tp = metrics.get("throughput", {})
        rows.append({
            "model": "static ResNet-20" if name == "static" else "enas4d S2DNAS (dynamic)",
            "budget_macs": result["budget"], "budget_fraction": round(result["budget"] / r20_macs, 3),
            "val_accuracy": result["val_accuracy"], "expected_macs": result["expected_macs"],
            "cross_fitted_accuracy": cf.get("val_accuracy"), "cross_fitted_macs": cf.get("expected_macs"),
            "best_static_subnet_accuracy": sb.get("val_accuracy"), "best_static_subnet_macs": sb.get("macs"),
            "export_accuracy": metrics["accuracy"], "export_avg_macs": metrics["avg_macs"],
            "exit_rates": "/".join(f"{r:.2f}" for r in metrics["exit_rates"]),
            "img_per_s_b1": (tp.get("1") or {}).get("early_exit_ips"),
            "img_per_s_b256": (tp.get("256") or {}).get("early_exit_ips"),
            "train_minutes": round(sum(state.data.get(f"train_{n}", {}).get("seconds", 0.0)
                                       for n in (["static"] if name == "static" else ["s2dnas_source", "s2dnas"]))
                                   / 60, 1),
            "run": str(base.relative_to(out)),
        })
    return rows


def fmt(v: Any, pct: bool = False) -> str:
    """A table cell: percentages, MACs in millions, or as is."""
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.2f}%"
    if isinstance(v, (int, float)) and v > 1e5:
        return f"{v / 1e6:.1f}M"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements of issue 12's targets, met or not, from the rows."""
    static = rows[0]
    base = static["export_accuracy"]
    lines = []
    for r in rows[1:]:
        frac = r["budget_fraction"]
        need = base - 0.03 if frac <= 0.25 else base if frac <= 0.5 else None  # issue 12's targets
        gap = r["export_accuracy"] - base
        lines.append(f"- at {frac:.0%} of ResNet-20's MACs: dynamic {fmt(r['export_accuracy'], True)} "
                     f"({100 * gap:+.2f} points vs the static ResNet-20's {fmt(base, True)})"
                     + ("" if need is None else f"; target >= {fmt(need, True)}: "
                        f"{'met' if r['export_accuracy'] >= need else 'not met'}"))
        sb = r["best_static_subnet_accuracy"]
        if sb is not None:
            lead = (r["cross_fitted_accuracy"] or r["val_accuracy"]) - sb
            lines.append(f"  dynamic (cross-fitted) vs the best static subnet at that budget: {100 * lead:+.2f} points "
                         f"(target >= +1.00: {'met' if lead >= 0.01 else 'not met'})")
    return lines


def write_results(out: Path, rows: list[dict[str, Any]], plan: dict[str, Any], r20_macs: int) -> None:
    """results.csv, results.md and results.png, each written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(out / "results.csv", buf.getvalue())
    head = ("| model | budget | val acc (search) | cross-fitted | avg MACs | best static subnet | export acc "
            "| export MACs | exit rates | img/s b1 | img/s b256 | train min |")
    md = [f"# CIFAR-10 reference ({time.strftime('%Y-%m-%d')})", "",
          f"Plan: {json.dumps(plan)}", "", head, "|" + "---|" * 12]
    for r in rows:
        md.append(f"| {r['model']} | {fmt(r['budget_macs'])} ({r['budget_fraction']:.0%}) | {fmt(r['val_accuracy'], True)} "
                  f"| {fmt(r['cross_fitted_accuracy'], True)} @ {fmt(r['cross_fitted_macs'])} | {fmt(r['expected_macs'])} "
                  f"| {fmt(r['best_static_subnet_accuracy'], True)} @ {fmt(r['best_static_subnet_macs'])} "
                  f"| {fmt(r['export_accuracy'], True)} | {fmt(r['export_avg_macs'])} | {r['exit_rates']} "
                  f"| {fmt(r['img_per_s_b1'])} | {fmt(r['img_per_s_b256'])} | {r['train_minutes']} |")
    md += ["", "Targets:", *targets(rows), ""]
    write_atomic(out / "results.md", "\n".join(md))
    plot(out, rows, r20_macs)


def plot(out: Path, rows: list[dict[str, Any]], r20_macs: int) -> None:
    """results.png: static baseline, the supernet's static-subnet front and its dynamic front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    fronts: dict[str, list[tuple[float, float]]] = {"dynamic": [], "static": []}
    for r in rows[1:]:
        with open(out / r["run"] / "search" / "pareto.csv") as f:
            for p in csv.DictReader(f):
                fronts[p["kind"]].append((float(p["expected_macs"]) / 1e6, 100 * float(p["val_accuracy"])))
    for kind, color in (("dynamic", "C0"), ("static", "C1")):
        pts = sorted(set(fronts[kind]))
        if pts:
            ax.plot(*zip(*pts), ".", color=color, ms=4, alpha=0.6, label=f"supernet {kind} front (search)")
    ax.scatter([r["export_avg_macs"] / 1e6 for r in rows[1:]], [100 * r["export_accuracy"] for r in rows[1:]],
               marker="*", s=150, color="C0", zorder=5, label="enas4d exports (measured)")
    ax.scatter([r20_macs / 1e6], [100 * rows[0]["export_accuracy"]], marker="D", s=60, color="k", zorder=5,
               label="static ResNet-20")
    ax.set_xlabel("average MACs per image (M)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("CIFAR-10: same training wall-clock")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = out / ".results.png.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out / "results.png")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the reference; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "cifar10_reference", help="run folder")
    p.add_argument("--data", default=os.environ.get("ENAS4D_CIFAR10", str(REPO.parent / "shared/data/cifar10/train.npz")),
                   help="CIFAR-10 .npz (x uint8 NHWC, y)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the static baseline, which set the "
                   "training budget of both paths (default 10; design.md's recipe is 15; 1 with --quick)")
    p.add_argument("--transform", choices=("split", "grow"), default="grow",
                   help="how the S2DNAS path turns its static source into 3 stages: grow two new cheap stages "
                   "in front of it (its last exit is the source; the default: more accurate at 50%% and 75%% "
                   "of the MACs, README Results) or split its channels (the paper)")
    p.add_argument("--source-fraction", type=float, default=None,
                   help="share of the S2DNAS path's budget spent training its static source (default 0.6 for "
                   "split: 0.3 left a 73%% teacher that capped the fine-tuning at 71%%; 0.8 for grow, whose "
                   "last exit is the source)")
    p.add_argument("--finetune-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="enas4d-train overrides of the S2DNAS fine-tuning (e.g. supernet.depths=[1,2,3]); "
                        "recorded in plan.json, and the step timing of the plan uses them too")
    p.add_argument("--gpu", action="store_true", help="train on one GPU (trainer=gpu); use with a longer "
                   "schedule, e.g. --epochs 60")
    p.add_argument("--quick", action="store_true", help="smoke variant: few batches, small searches (< 15 min)")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"cifar10-reference: error: --data: no file at {args.data!r}", file=sys.stderr)
        return 2
    if args.source_fraction is None:
        args.source_fraction = 0.6 if args.transform == "split" else 0.8
    if not 0.0 < args.source_fraction < 1.0:
        print(f"cifar10-reference: error: --source-fraction={args.source_fraction} not allowed; allowed: (0, 1)",
              file=sys.stderr)
        return 2
    args.epochs = args.epochs if args.epochs is not None else (1 if args.quick else 10)
    if args.epochs < 2 and not args.quick:
        print(f"cifar10-reference: error: --epochs={args.epochs} not allowed; allowed: >= 2", file=sys.stderr)
        return 2
    args.train_batches = 30 if args.quick else None
    if args.quick and args.out == REPO / "outputs" / "cifar10_reference":
        args.out = REPO / "outputs" / "cifar10_reference_quick"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    state = State(out / "state.json")
    try:
        plan = make_plan(args, out)
        if plan.get("quick") != args.quick:
            raise ReferenceError(f"{out}/plan.json was made {'with' if plan.get('quick') else 'without'} --quick; "
                                 "use another --out or remove that folder")
        if plan.get("finetune_set", []) != args.finetune_set:
            raise ReferenceError(f"{out}/plan.json was made with --finetune-set {plan.get('finetune_set', [])}; "
                                 "use another --out or remove that folder")
        if plan.get("transform", "split") != args.transform:
            raise ReferenceError(f"{out}/plan.json was made with --transform {plan.get('transform', 'split')}; "
                                 "use another --out or remove that folder")
        print(f"cifar10-reference: plan {json.dumps(plan)}", flush=True)
        train_both(out, plan, state, args)
        static_ckpt = out / "static" / "checkpoints" / "last.ckpt"
        r20 = static_macs(static_ckpt)
        search_export_evaluate(out, "static", static_ckpt, str(r20), state, args)
        for f in FRACTIONS:
            search_export_evaluate(out, f"s2dnas_{int(f * 100)}", out / "s2dnas" / "checkpoints" / "last.ckpt",
                                   str(int(f * r20)), state, args)
        rows = collect(out, plan, state, r20)
        write_results(out, rows, plan, r20)
    except ReferenceError as e:
        print(f"cifar10-reference: error: {e}", file=sys.stderr)
        return 1
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
