"""Training-step time of the supernet versus the extracted static model of the same subnet.

For the smallest, middle and largest subnet of a family: forward + backward of all exits at batch
64 and 32x32, timed side by side in one run (interleaved, median of repeats), printed as the ratio
supernet / static. Target (issue 2): at most 1.10 at every size.

    .venv/bin/python tools/bench_supernet.py --family resnet_cifar mbv3_cifar
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import enas4d


def _step(model, x, y) -> None:
    outs = model(x)
    loss = sum(F.cross_entropy(o, y) for o in outs)
    loss.backward()


def _time(model, x, y, n: int) -> float:
    """Median seconds per training step over n steps (after the caller's warm-up)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        _step(model, x, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(family: str, stages: int, batch: int, steps: int, rounds: int) -> list[tuple[str, float, float]]:
    """[(size, supernet s/step, static s/step)] for smallest, middle, largest."""
    net = enas4d.create_supernet(family, num_classes=10, num_stages=stages).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rows = []
    for name, s in [("smallest", net.space.smallest()), ("middle", net.space.middle()),
                    ("largest", net.space.largest())]:
        s = s.with_all_exits()
        net.set_subnet(s)
        with net.bn_unchecked():  # trained from here: its BatchNorm statistics do not matter
            static = net.extract(s).train()
        for p in static.parameters():
            p.requires_grad_(True)
        for m in (net, static):  # warm-up (allocator, oneDNN primitives)
            _step(m, x, y)
        sup, sta = [], []
        for _ in range(rounds):  # interleave so drifting machine load hits both alike
            sup.append(_time(net, x, y, steps))
            sta.append(_time(static, x, y, steps))
        rows.append((name, statistics.median(sup), statistics.median(sta)))
    return rows


def main() -> None:
    """Parse arguments, run, print a table of ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", nargs="+", default=["resnet_cifar", "mbv3_cifar"], choices=enas4d.list_supernets())
    ap.add_argument("--stages", type=int, default=3, help="number of stages K")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads={args.threads} not allowed; allowed: >= 1")
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, 32x32, "
          f"K={args.stages}, forward+backward of all exits")
    print(f"{'family':<16}{'subnet':<10}{'supernet ms':>12}{'static ms':>11}{'ratio':>8}")
    for fam in args.family:
        for name, sup, sta in bench(fam, args.stages, args.batch, args.steps, args.rounds):
            print(f"{fam:<16}{name:<10}{sup * 1e3:>12.1f}{sta * 1e3:>11.1f}{sup / sta:>8.2f}")


if __name__ == "__main__":
    main()
