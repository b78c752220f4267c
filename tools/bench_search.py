"""Benchmark of enas4d-search, everything measured side by side in one run.

    .venv/bin/python tools/bench_search.py --ckpt outputs/demo/train/checkpoints/last.ckpt --budget 0.5x
    .venv/bin/python tools/bench_search.py            # random-weight 3-exit digits checkpoint (no training)
    .venv/bin/python tools/bench_search.py --random cifar10 --evaluations 8   # timings at CIFAR-10 size

Prints:
  1. candidates evaluated per second (BN re-estimation + one validation pass per architecture),
     and per second when answered from the cache;
  2. the speed-up of cached threshold calibration over re-running the network for each threshold
     setting: (a) per setting, scoring R settings from the cache vs R validation passes, both
     measured; (b) the exact calibration (all S settings it examines) vs S passes at the measured
     cost of one pass;
  3. seconds to a result for the budget (a full `search`, fresh cache);
  4. evolution vs random search at equal evaluations (same budget, same seed, shared cache).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from enas4d.checkpoint import load_supernet, make_meta  # noqa: E402
from enas4d.search.calibrate import calibrate, exit_costs, exit_subsets, simulate  # noqa: E402
from enas4d.checkpoint import build_datamodule  # noqa: E402
from enas4d.search.cli import CONF_DIR, search  # noqa: E402
from enas4d.search.evaluator import CandidateEvaluator  # noqa: E402
from enas4d.nn.bn import BNEstimationSet  # noqa: E402
from enas4d.utils.seed import make_generator  # noqa: E402


def random_checkpoint(path: Path, data: str) -> Path:
    """A 3-exit resnet_cifar with random weights on ``data`` (digits, or cifar10 from
    $ENAS4D_CIFAR10 / ../shared/data/cifar10/train.npz), per the checkpoint contract: realistic
    timings, meaningless accuracies."""
    import os

    import enas4d
    from enas4d.data import create_datamodule

    torch.manual_seed(0)
    net = enas4d.create_supernet("resnet_cifar", num_classes=10, num_stages=3, in_chans=3)
    cfg = dict(batch_size=64, eval_batch_size=None, val_fraction=0.1, val_size=None, seed=0, hflip=False,
               num_workers=0, pin_memory=False)
    if data == "digits":
        cfg.update(image_size=32, crop_padding=2)
    else:
        cfg.update(path=os.environ.get("ENAS4D_CIFAR10", str(REPO.parent / "shared/data/cifar10/train.npz")),
                   crop_padding=4)
    dm = create_datamodule(data, **cfg)
    dm.setup()
    cfg["mean"], cfg["std"] = list(dm.mean), list(dm.std)
    meta = {"name": data, "cfg": cfg, "mean": list(dm.mean), "std": list(dm.std),
            "class_names": list(dm.class_names), "image_size": dm.image_size}
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                "enas4d": make_meta(net, meta)}, path)
    return path


def settings_examined(table, subsets) -> int:
    """Threshold settings the exact calibration scores: per exit subset, the product of the
    distinct confidence counts of its early exits."""
    distinct = [len(np.unique(c)) for c in table.conf[:-1]]
    return sum(int(np.prod([d for d, on in zip(distinct, exits) if on])) for exits in subsets)


def main() -> None:
    """Run the benchmark and print its numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=None, help="training checkpoint (default: random-weight digits)")
    ap.add_argument("--random", choices=("digits", "cifar10"), default="digits",
                    help="data of the random-weight checkpoint used when --ckpt is not given")
    ap.add_argument("--budget", default="0.5x", help="search budget (default 0.5x of the largest subnet)")
    ap.add_argument("--candidates", type=int, default=6, help="architectures timed for evaluations/second")
    ap.add_argument("--settings", type=int, default=3, help="threshold settings re-run through the network")
    ap.add_argument("--evaluations", type=int, default=16, help="evaluations per search (evolution and random)")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--bn-images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    ckpt = args.ckpt or random_checkpoint(tmp / f"random_{args.random}.ckpt", args.random)
    print(f"checkpoint {ckpt}; torch threads {torch.get_num_threads()}; scratch {tmp}")

    # 1. Candidates per second.
    net, meta = load_supernet(ckpt)
    dm = build_datamodule(meta, {})
    val = [(x, y) for x, y in dm.val_dataloader()]
    bn_set = BNEstimationSet(dm.bn_dataloader(num_images=args.bn_images, batch_size=200))
    n_val = sum(len(y) for _, y in val)
    ev = CandidateEvaluator(net, bn_set, val, "max_softmax", cache=None)
    gen = make_generator(0, 99)
    archs = [net.space.sample(gen).with_all_exits() for _ in range(args.candidates)]
    t0 = time.perf_counter()
    tables = [ev.table(a) for a in archs]
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    for a in archs:
        ev.table(a)
    t_hit = time.perf_counter() - t0
    print(f"[1] {n_val} validation + {bn_set.num_images} BN images: {args.candidates / t_eval:.3f} candidates/s "
          f"({t_eval / args.candidates:.2f} s each, network); {args.candidates / max(t_hit, 1e-9):.0f}/s from cache")

    # 2. Cached calibration vs re-running the network per threshold setting (same architecture).
    a, table = archs[0], tables[0]
    body, heads = net.stage_macs(a)
    gen = np.random.default_rng(0)
    settings = [[float(t) for t in gen.uniform(0.1, 0.9, net.num_stages - 1)] + [0.0] for _ in range(args.settings)]
    bn_set.reestimate(net, a)
    net.eval()
    t0 = time.perf_counter()
    for ths in settings:  # early exit simulated on the network's outputs of one full pass
        with torch.inference_mode():
            outs = [torch.cat(o) for o in zip(*(net(x) for x, _ in val))]
        conf = [o.softmax(-1).amax(-1) for o in outs]
        undecided = torch.ones(n_val, dtype=torch.bool)
        for k, c in enumerate(conf):
            leave = undecided & (c.double() >= ths[k])
            undecided &= ~leave
    t_net = (time.perf_counter() - t0) / args.settings
    t0 = time.perf_counter()
    reps = 200
    for _ in range(reps):
        for ths in settings:
            simulate(table, (True,) * net.num_stages, ths, body, heads)
    t_cache = (time.perf_counter() - t0) / (reps * args.settings)
    print(f"[2a] per threshold setting: network pass {t_net * 1e3:.1f} ms, from cache {t_cache * 1e3:.3f} ms "
          f"-> speed-up {t_net / t_cache:.0f}x")
    budget = 0.5 * exit_costs(body, heads, (True,) * net.num_stages)[-1]
    t0 = time.perf_counter()
    pol = calibrate(table, body, heads, budget)
    t_cal = time.perf_counter() - t0
    subsets = exit_subsets(net.num_stages, True)
    S = settings_examined(table, subsets)
    print(f"[2b] exact calibration over all {S} settings ({len(subsets)} exit subsets): {t_cal:.3f} s; "
          f"re-running the network for each: {S * t_net:.0f} s (est. from the measured pass) -> speed-up "
          f"{S * t_net / t_cal:.0f}x (accuracy {pol.accuracy:.4f} at {pol.expected_macs:.0f} MACs)")

    # 3 + 4. Seconds to a result; evolution vs random at equal evaluations (shared cache).
    results = {}
    cache = tmp / "cache"
    for algo in ("evolution", "random"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("search", overrides=[f"ckpt={ckpt}", f"budget={args.budget}", f"algorithm={algo}",
                                               f"evaluations={args.evaluations}", f"population={args.population}",
                                               f"static_evaluations={args.evaluations}", f"bn.images={args.bn_images}",
                                               f"cache_dir={cache}", "progress=false"])
        t0 = time.perf_counter()
        res = search(cfg, tmp / algo, Console(file=io.StringIO()))
        results[algo] = (res, time.perf_counter() - t0)
    res, secs = results["evolution"]
    sb = res["static_best"]
    static = "-" if sb is None else "{:.2f}% at {} MACs".format(100 * sb["val_accuracy"], sb["macs"])
    print(f"[3] search to a result (evolution, {args.evaluations} dynamic + {args.evaluations} static evaluations, "
          f"fresh cache): {secs:.1f} s; {res['search']['network_evaluations']} network evaluations; budget "
          f"{res['budget']:.0f}: dynamic {100 * res['val_accuracy']:.2f}% at {res['expected_macs']:.0f} MACs, "
          f"best static {static}")
    for algo, (r, secs) in results.items():
        print(f"[4] {algo:9s}: best dynamic {100 * r['val_accuracy']:.2f}% at {r['expected_macs']:.0f} MACs "
              f"({r['search']['evaluations']} evaluations, {r['search']['network_evaluations']} run, {secs:.1f} s)")


if __name__ == "__main__":
    main()
