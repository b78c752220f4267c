"""Wall-clock of exported early-exit models against a K = 1 export and a plain static network.

For every family (random weights, BatchNorm calibrated on random images, then folded, scripted and
reloaded the way enas4d-export writes model.ts): the largest subnet with the family's smallest
kernel exported at K = 1 and at K = 3, both forced through their last exit, and the family's plain
static network (``resnet_cifar``: a plain ResNet-20 of nn.Conv2d/BatchNorm; enas4d.export.baseline)
prepared the same way (BatchNorm folded, activations in place, the same channels-last rule, scripted).
All models of a family run interleaved (the order rotates rep by rep; median of the reps) at each
batch size, one intra-op thread by default. Printed per model: MACs per image, ms per image, MACs
per second and MACs/s relative to the plain network; then the multi-stage tax

    tax = (MACs/s of the K = 1 export) / (MACs/s of the K = 3 export)     (1.0: no tax)

With ``--export DIR`` also a searched export (its own early exit on its validation images, and
forced through its last exit) against the plain network of its family: time per image relative to
the plain network next to the MACs ratio.

    .venv/bin/python tools/bench_export.py                       # about a minute on one thread
    .venv/bin/python tools/bench_export.py --clock cpu           # on a busy machine: CPU time, not wall
    .venv/bin/python tools/bench_export.py --quick               # a few seconds, a smoke test
    .venv/bin/python tools/bench_export.py --export outputs/demo/export --families resnet_cifar
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

import enas4d
from enas4d.export import jit
from enas4d.export.baseline import count_macs, family_spec, plain_for
from enas4d.export.early_exit import build_early_exit
from enas4d.nn.bn import recalibrate_bn

CIFAR_FAMILIES = ("resnet_cifar", "mbv3_cifar")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def deploy(model: nn.Module) -> torch.jit.ScriptModule:
    """Script, save and reload ``model``, as enas4d-export writes and a user loads model.ts."""
    return jit.roundtrip(model)


def export_of(family: str, num_stages: int, kernel: str, seed: int = 0) -> tuple[torch.jit.ScriptModule, int, int]:
    """(scripted early-exit model, number of exits, MACs of its last exit) of the largest subnet."""
    torch.manual_seed(seed)
    net = enas4d.create_supernet(family, num_classes=10, num_stages=num_stages)
    s = net.space.largest()
    pick = min if kernel == "min" else max
    s = dataclasses.replace(s, kernel=tuple(tuple(pick(c) for c in row) for row in net.space.kernels))
    net.set_subnet(s)
    gen = torch.Generator().manual_seed(seed)
    recalibrate_bn(net, [torch.randn(16, 3, s.resolution, s.resolution, generator=gen)])
    net.eval()
    E = sum(s.exits)
    model = build_early_exit(net.extract(s), MEAN, STD, [0.5] * (E - 1) + [0.0], 10)
    return deploy(model), E, net.macs(s)[-1]


def interleaved(fns: dict[str, Callable[[int], Any]], reps: int, inner: int, warmup: int = 2,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median over ``reps`` of the seconds one call of each fn takes; ``fn(i)`` is call i of a rep.

    Each rep runs ``inner`` calls of one fn, then of the next; the order rotates from rep to rep,
    so load from other processes falls on all of them alike.
    """
    names = list(fns)
    for name in names:  # TorchScript's profiling executor optimises after the first calls
        for i in range(warmup):
            fns[name](i)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            fn = fns[name]
            t0 = clock()
            for i in range(inner):
                fn(i)
            times[name].append((clock() - t0) / inner)
    return {n: statistics.median(t) for n, t in times.items()}


def _inf(num_exits: int) -> Tensor:
    return torch.full((num_exits,), float("inf"), dtype=torch.float64)


def family_models(family: str, kernel: str) -> dict[str, Any]:
    """The scripted K = 1 and K = 3 exports and plain network of ``family``, with their last-exit MACs."""
    plain = plain_for(enas4d.create_supernet(family, num_classes=10, num_stages=1).spec, 10)
    side = plain.preprocess.resolution
    return {"family": family, "side": side, "K=1": export_of(family, 1, kernel), "K=3": export_of(family, 3, kernel),
            "plain": (deploy(plain), 0, count_macs(plain, 3, side))}


def bench_family(models: dict[str, Any], batch: int, reps: int, inner: int,
                 clock: Callable[[], float]) -> dict[str, Any]:
    """Seconds per image and MACs per image of K = 1, K = 3 (forced last exit) and the plain network."""
    side = models["side"]
    x = torch.rand(batch * inner if batch == 1 else batch, 3, side, side, generator=torch.Generator().manual_seed(1))
    (k1, e1, m1), (k3, e3, m3), (plain, _, mp) = models["K=1"], models["K=3"], models["plain"]
    inf1, inf3 = _inf(e1), _inf(e3)

    def pick(i: int) -> Tensor:
        return x[i:i + 1] if batch == 1 else x

    with torch.no_grad():
        t = interleaved({"K=1": lambda i: k1(pick(i), inf1), "K=3": lambda i: k3(pick(i), inf3),
                         "plain": lambda i: plain(pick(i))}, reps, inner if batch == 1 else 1, clock=clock)
    macs = {"K=1": m1, "K=3": m3, "plain": mp}
    return {"family": models["family"], "batch": batch, "sec": {n: t[n] / batch for n in t}, "macs": macs}


def _data_images(meta: dict[str, Any], count: int) -> Tensor:
    """The first ``count`` validation images of the export's data, in [0, 1]."""
    from enas4d.checkpoint import CheckpointMeta, build_datamodule
    from enas4d.export.metrics import to_unit

    dm = build_datamodule(CheckpointMeta(meta["supernet"], meta["space"], meta["data"]), {})
    xs, n = [], 0
    for xb, _ in dm.val_dataloader():
        xs.append(to_unit(xb, dm.mean, dm.std))
        n += xb.shape[0]
        if n >= count:
            break
    pool = torch.cat(xs)
    return pool.repeat(-(-count // pool.shape[0]), 1, 1, 1)[:count]


def bench_export(folder: Path, batch: int, reps: int, inner: int, clock: Callable[[], float]) -> dict[str, Any]:
    """The searched export's early exit and forced last exit versus the plain network of its family."""
    meta = json.loads((folder / "subnet.json").read_text())
    model = jit.load(folder / meta["files"]["torchscript"])
    name, classes = meta["supernet"]["name"], meta["num_classes"]
    spec = family_spec(meta["supernet"])
    if spec is None:
        raise SystemExit(f"--export: no plain network to compare with for {name!r} (transformed from a graph)")
    plain = deploy(plain_for(spec, classes, meta["in_chans"]))
    side = plain.preprocess.resolution
    x = _data_images(meta, batch * inner if batch == 1 else batch)
    xp = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False) \
        if x.shape[-1] != side else x  # the plain network at its own input size
    inf = _inf(len(meta["exit_macs"]))

    def pick(t: Tensor, i: int) -> Tensor:
        return t[i:i + 1] if batch == 1 else t

    with torch.no_grad():
        exits = model(x)[1] if batch > 1 else torch.cat([model(x[i:i + 1])[1] for i in range(x.shape[0])])
        t = interleaved({"early exit": lambda i: model(pick(x, i)), "forced last": lambda i: model(pick(x, i), inf),
                         "plain": lambda i: plain(pick(xp, i))}, reps, inner if batch == 1 else 1, clock=clock)
    exit_macs = torch.tensor([float(m) for m in meta["exit_macs"]], dtype=torch.float64)
    macs = {"early exit": float(exit_macs[exits].mean()), "forced last": float(exit_macs[-1]),
            "plain": count_macs(plain, meta["in_chans"], side)}
    return {"family": name, "batch": batch, "sec": {n: t[n] / batch for n in t}, "macs": macs}


def print_rows(res: dict[str, Any], ref: str) -> None:
    """One line per model: MACs, ms per image, GMACs/s, MACs/s relative to ``ref`` and time relative to it."""
    sec, macs = res["sec"], res["macs"]
    rate_ref = macs[ref] / sec[ref]
    for name in sec:
        rate = macs[name] / sec[name]
        print(f"{res['family'][:13]:<14}{res['batch']:>6}  {name:<12}{macs[name] / 1e6:>9.2f}M{sec[name] * 1e3:>10.3f}"
              f"{rate / 1e9:>9.2f}{rate / rate_ref:>10.2f}{sec[name] / sec[ref]:>10.2f}{macs[name] / macs[ref]:>10.2f}")


def main() -> None:
    """Parse arguments, run every benchmark, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="*", default=list(CIFAR_FAMILIES), choices=list(CIFAR_FAMILIES),
                    help="families built fresh at K=1 and K=3 (none: only --export)")
    ap.add_argument("--export", type=Path, default=None, help="an enas4d-export folder to time as well")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--reps", type=int, default=9, help="interleaved reps per model (median taken)")
    ap.add_argument("--inner", type=int, default=20, help="single-image calls per rep at batch 1")
    ap.add_argument("--kernel", choices=("min", "max"), default="min",
                    help="kernel of the largest subnet (min: 3x3, the ResNet-20 shape for resnet_cifar)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: CPU time of the process (with one thread: of the "
                         "calling thread), which time slices lost to other processes do not inflate")
    ap.add_argument("--quick", action="store_true", help="few reps and small batches: a few seconds")
    args = ap.parse_args()
    if args.threads < 1 or args.reps < 1 or args.inner < 1 or min(args.batch_sizes) < 1:
        ap.error("--threads, --reps, --inner and --batch-sizes must be >= 1")
    if args.export is not None and not (args.export / "subnet.json").is_file():
        ap.error(f"--export: {str(args.export)!r} is not an enas4d export folder (no subnet.json)")
    if args.quick:
        args.reps, args.inner, args.batch_sizes = 2, 3, [1, 16]
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time if args.threads == 1 else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock, "
          f"largest subnets with {args.kernel} "
          f"kernels, models interleaved, median of {args.reps} reps ({args.inner} images per rep at batch 1); "
          "K=1/K=3: exported early-exit models forced through their last exit")
    head = (f"{'family':<14}{'batch':>6}  {'model':<12}{'MACs/img':>10}{'ms/img':>10}{'GMAC/s':>9}"
            f"{'MAC/s rel':>10}{'time rel':>10}{'MACs rel':>10}")
    taxes = []
    if args.families:
        print("\nMACs/s, time and MACs relative to the plain network of the family")
        print(head)
    for fam in args.families:
        models = family_models(fam, args.kernel)
        for bs in args.batch_sizes:
            res = bench_family(models, bs, args.reps, args.inner, clock)
            print_rows(res, "plain")
            rate = {n: res["macs"][n] / res["sec"][n] for n in res["sec"]}
            taxes.append((fam, bs, rate["K=1"] / rate["K=3"]))
    if taxes:
        print("\nmulti-stage tax = (MACs/s of K=1) / (MACs/s of K=3), both forced through the last exit "
              "(target <= 1.3, limit 1.0)")
        for fam, bs, tax in taxes:
            print(f"  {fam:<14} batch {bs:>4}: {tax:.2f}")
    if args.export is not None:
        print(f"\nexport {args.export} ({json.loads((args.export / 'subnet.json').read_text())['supernet']['name']}): "
              "time per image and MACs relative to the plain network "
              "(early exit: its thresholds on its validation images)")
        print(head)
        for bs in args.batch_sizes:
            print_rows(bench_export(args.export, bs, args.reps, args.inner, clock), "plain")


if __name__ == "__main__":
    main()
