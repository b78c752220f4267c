"""Wall-clock of exported early-exit models against a K = 1 export and a plain static network.

For every family (random weights, BatchNorm statistics re-estimated on random images, then folded, scripted and
reloaded the way enas4d-export writes model.ts): the largest subnet with the family's smallest
kernel exported at K = 1 and at K = 3, both forced through their last exit, and the family's plain
static network (``resnet_cifar``: a plain ResNet-20 of nn.Conv2d/BatchNorm; enas4d.export.baseline)
prepared the same way (BatchNorm folded, activations in place, the same channels-last rule, scripted).
All models of a family run interleaved (the order rotates rep by rep; median of the reps) at each
batch size, one intra-op thread by default. Printed per model: MACs per image, ms per image, MACs
per second and MACs/s relative to the plain network; then the multi-stage tax

    tax = (MACs/s of the K = 1 export) / (MACs/s of the K = 3 export)     (1.0: no tax)

With ``--layout`` the K = 3 export is also built with other slice layouts (default: ``equal`` only):

    equal          the family's supernet: K equal slices, every stage reads all earlier ones
    narrow-first   the family's NetSpec with slice_fracs = (0.25, 0.25, 0.5): two narrow stages, a
                   wide last one (every stage still reads all earlier slices)
    grow           enas4d.transform.from_static of the family's static network (resnet_cifar:
                   resnet20_static, mbv3_cifar: mbv3_static) with grow = (0.5, 0.25): new slices
                   0.5x and 0.25x as wide in front, the static network as the last slice, which
                   reads only its own slice (reads_from)

each with random weights, BatchNorm re-estimated and folded like the others, forced through its last
exit, timed interleaved with the rest, with its tax against the K = 1 export. Where the static
network is not the K = 1 export's architecture (mbv3_static has 5x5 depthwise kernels, the K = 1
export the --kernel choice) its own K = 1 export ("K=1 static") is timed too, and the grow tax is
also given against it.

With ``--export DIR`` also a searched export (its own early exit on its validation images, and
forced through its last exit) against the plain network of its family: time per image relative to
the plain network next to the MACs ratio.

    .venv/bin/python tools/bench_export.py                       # about a minute on one thread
    .venv/bin/python tools/bench_export.py --clock cpu           # on a busy machine: CPU time, not wall
    .venv/bin/python tools/bench_export.py --quick               # a few seconds, a smoke test
    .venv/bin/python tools/bench_export.py --clock cpu --layout equal narrow-first grow   # a few minutes
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
from enas4d.models.supernet import MultiStageSupernet
from enas4d.nn.bn import reestimate_bn
from enas4d.space import Subnet
from enas4d.transform import from_static

CIFAR_FAMILIES = ("resnet_cifar", "mbv3_cifar")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LAYOUTS = ("equal", "narrow-first", "grow")
NARROW_FIRST = (0.25, 0.25, 0.5)  # slice_fracs of the narrow-first layout
GROW = (0.5, 0.25)  # from_static(grow=...) of the grow layout
STATIC_OF = {"resnet_cifar": "resnet20_static", "mbv3_cifar": "mbv3_static"}  # the family's static network
MODEL_OF = {"equal": "K=3", "narrow-first": "K=3 narrow", "grow": "K=3 grow"}  # row name of each layout
STATIC_REF = "K=1 static"


def deploy(model: nn.Module) -> torch.jit.ScriptModule:
    """Script, save and reload ``model``, as enas4d-export writes and a user loads model.ts."""
    return jit.roundtrip(model)


def supernet_of(family: str, num_stages: int, layout: str = "equal") -> MultiStageSupernet:
    """The supernet of ``family`` with K = ``num_stages`` in slice layout ``layout`` (module docstring);
    ``static``: the family's static network (K = 1 only). Random weights from the current seed."""
    if layout == "equal":
        return enas4d.create_supernet(family, num_classes=10, num_stages=num_stages)
    if layout == "static":
        return enas4d.create_supernet(STATIC_OF[family], num_classes=10, num_stages=num_stages)
    if layout == "narrow-first":
        spec = dataclasses.replace(enas4d.create_supernet(family, num_classes=10, num_stages=1).spec,
                                   slice_fracs=NARROW_FIRST, reads_from=None)
        return MultiStageSupernet(spec, 10, num_stages, name=f"{family}-narrow-first")
    if layout == "grow":
        static = enas4d.create_supernet(STATIC_OF[family], num_classes=10, num_stages=1)
        return from_static(static, num_stages, grow=GROW)
    raise ValueError(f"layout={layout!r} not allowed; allowed: {list(LAYOUTS) + ['static']}")


def largest_subnet(net: MultiStageSupernet, kernel: str) -> Subnet:
    """The largest subnet of ``net`` with every kernel the smallest (``min``) or largest (``max``) candidate."""
    pick = min if kernel == "min" else max
    kernel_grid = tuple(tuple(pick(c) for c in row) for row in net.space.kernels)
    return dataclasses.replace(net.space.largest(), kernel=kernel_grid)


def architecture(net: MultiStageSupernet, s: Subnet) -> tuple:
    """What fixes the network ``s`` of ``net`` computes (its spec less the candidate lists, and ``s``)."""
    spec = dataclasses.replace(net.spec, width_mults=(), kernels=(), depths=(), expands=None, resolutions=())
    return spec, net.num_stages, s


def export_of(family: str, num_stages: int, kernel: str, seed: int = 0,
              layout: str = "equal") -> tuple[torch.jit.ScriptModule, int, int]:
    """(scripted early-exit model, number of exits, MACs of its last exit) of the largest subnet."""
    torch.manual_seed(seed)
    net = supernet_of(family, num_stages, layout)
    s = largest_subnet(net, kernel)
    net.set_subnet(s)
    gen = torch.Generator().manual_seed(seed)
    reestimate_bn(net, [torch.randn(16, 3, s.resolution, s.resolution, generator=gen)])
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


def needs_static_ref(family: str, kernel: str) -> bool:
    """Whether the family's static network differs from its K = 1 export (then the grow layout's tax
    is also taken against the static network's own K = 1 export)."""
    fam, static = supernet_of(family, 1), supernet_of(family, 1, "static")
    return architecture(fam, largest_subnet(fam, kernel)) != architecture(static, largest_subnet(static, kernel))


def family_models(family: str, kernel: str, layouts: tuple[str, ...] = ("equal",)) -> dict[str, Any]:
    """The scripted K = 1 export, the K = 3 export of every layout and the plain network of ``family``
    (with the static network's K = 1 export where the grow layout needs it), as (model, number of
    exits, MACs of the last exit) by row name, in the order they are printed."""
    plain = plain_for(enas4d.create_supernet(family, num_classes=10, num_stages=1).spec, 10)
    side = plain.preprocess.resolution
    models = {"K=1": export_of(family, 1, kernel)}
    for layout in layouts:
        models[MODEL_OF[layout]] = export_of(family, 3, kernel, layout=layout)
    if "grow" in layouts and needs_static_ref(family, kernel):
        models[STATIC_REF] = export_of(family, 1, kernel, layout="static")
    models["plain"] = (deploy(plain), 0, count_macs(plain, 3, side))
    return {"family": family, "side": side, "models": models}


def bench_family(models: dict[str, Any], batch: int, reps: int, inner: int,
                 clock: Callable[[], float]) -> dict[str, Any]:
    """Seconds per image and MACs per image of every model of :func:`family_models` (exports forced
    through their last exit), timed interleaved."""
    side = models["side"]
    x = torch.rand(batch * inner if batch == 1 else batch, 3, side, side, generator=torch.Generator().manual_seed(1))

    def pick(i: int) -> Tensor:
        return x[i:i + 1] if batch == 1 else x

    def runner(model: Any, exits: int) -> Callable[[int], Any]:
        if exits == 0:  # the plain network
            return lambda i: model(pick(i))
        inf = _inf(exits)
        return lambda i: model(pick(i), inf)

    fns = {name: runner(model, exits) for name, (model, exits, _) in models["models"].items()}
    with torch.no_grad():
        t = interleaved(fns, reps, inner if batch == 1 else 1, clock=clock)
    macs = {name: m for name, (_, _, m) in models["models"].items()}
    return {"family": models["family"], "batch": batch, "sec": {n: t[n] / batch for n in fns}, "macs": macs}


def taxes_of(res: dict[str, Any], layouts: tuple[str, ...]) -> dict[str, float]:
    """Multi-stage tax of every layout's K = 3 export: MACs/s of K = 1 over its MACs/s; with the
    static network's K = 1 export timed, also ``"grow vs static"`` against that."""
    rate = {n: res["macs"][n] / res["sec"][n] for n in res["sec"]}
    out = {layout: rate["K=1"] / rate[MODEL_OF[layout]] for layout in layouts}
    if STATIC_REF in rate and "grow" in layouts:
        out["grow vs static"] = rate[STATIC_REF] / rate[MODEL_OF["grow"]]
    return out


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
    ap.add_argument("--layout", nargs="+", action="extend", choices=list(LAYOUTS), default=None,
                    help="slice layouts of the K=3 export (repeatable or a list; default: equal; see above)")
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
    layouts = tuple(dict.fromkeys(args.layout or ["equal"]))
    if args.quick:
        args.reps, args.inner, args.batch_sizes = 2, 3, [1, 16]
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time if args.threads == 1 else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock, "
          f"largest subnets with {args.kernel} "
          f"kernels, models interleaved, median of {args.reps} reps ({args.inner} images per rep at batch 1); "
          "K=1/K=3: exported early-exit models forced through their last exit"
          + ("" if layouts == ("equal",) else
             f"; K=3 layouts: {', '.join(layouts)} (narrow-first: slice_fracs {NARROW_FIRST}; "
             f"grow: from_static(grow={GROW}) of {'/'.join(STATIC_OF[f] for f in args.families)})"))
    head = (f"{'family':<14}{'batch':>6}  {'model':<12}{'MACs/img':>10}{'ms/img':>10}{'GMAC/s':>9}"
            f"{'MAC/s rel':>10}{'time rel':>10}{'MACs rel':>10}")
    taxes = []
    if args.families:
        print("\nMACs/s, time and MACs relative to the plain network of the family")
        print(head)
    for fam in args.families:
        models = family_models(fam, args.kernel, layouts)
        for bs in args.batch_sizes:
            res = bench_family(models, bs, args.reps, args.inner, clock)
            print_rows(res, "plain")
            taxes.append((fam, bs, taxes_of(res, layouts)))
    if taxes:
        print("\nmulti-stage tax = (MACs/s of K=1) / (MACs/s of K=3), both forced through the last exit "
              "(target <= 1.3, limit 1.0)")
        for fam, bs, tax in taxes:
            if layouts == ("equal",):
                print(f"  {fam:<14} batch {bs:>4}: {tax['equal']:.2f}")
            else:
                print(f"  {fam:<14} batch {bs:>4}: " + ", ".join(f"{n} {v:.2f}" for n, v in tax.items()))
        if layouts != ("equal",):
            print("  target met (every family and batch above): " + ", ".join(
                f"{n} {'yes' if all(t[n] <= 1.3 for _, _, t in taxes if n in t) else 'no'}"
                for n in taxes[0][2]))
    if args.export is not None:
        print(f"\nexport {args.export} ({json.loads((args.export / 'subnet.json').read_text())['supernet']['name']}): "
              "time per image and MACs relative to the plain network "
              "(early exit: its thresholds on its validation images)")
        print(head)
        for bs in args.batch_sizes:
            print_rows(bench_export(args.export, bs, args.reps, args.inner, clock), "plain")


if __name__ == "__main__":
    main()
