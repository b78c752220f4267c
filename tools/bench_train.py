"""Training throughput: one sandwich-rule step versus plain training of the extracted largest subnet.

Measured side by side in one run, on the same batch, steps interleaved so that machine noise hits
both alike; reports the median step time of each and the ratios:

- ``sandwich``: one SupernetModule step (largest + smallest + n random subnets, every exit, in-place
  distillation, one backward, one SGD step);
- ``supernet largest`` / ``supernet smallest``: one supernet step of a single subnet (the cost of
  the elastic machinery; once-for-all measures 0.97x / 1.10x the static network here);
- ``static largest``: the largest subnet extracted to plain torch modules, trained on all its exits.

With ``--s2dnas-grow``, two more rows, the training of ``make cifar10-reference`` (issue 12):

- ``s2dnas grow``: one fine-tuning step of a static ResNet-20 grown into 3 stages (two new stages in
  front, ``supernet.grow=[0.5,0.25]``; the static stage frozen, so the step runs stages 1-2 of the
  largest and smallest subnets plus the static teacher's forward);
- ``static resnet20``: one plain training step of that static ResNet-20 (the baseline's step).

    .venv/bin/python tools/bench_train.py --supernet resnet_cifar --batch-size 64 --threads 2
    .venv/bin/python tools/bench_train.py --s2dnas-grow --batch-size 128 --threads 1
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import enas4d
from enas4d.training import SupernetModule, param_groups
from enas4d.training.losses import multi_exit_loss


def _timed(fn: Callable[[], None]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Parse arguments, run the interleaved measurements, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default="resnet_cifar", choices=enas4d.list_supernets())
    ap.add_argument("--num-stages", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32, help="side of the input batch (the model resizes)")
    ap.add_argument("--n-random", type=int, default=2, help="random subnets per sandwich step")
    ap.add_argument("--steps", type=int, default=10, help="measured steps of each kind")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps of each kind first")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--s2dnas-grow", action="store_true",
                    help="also time a grown S2DNAS fine-tuning step against a static ResNet-20 step")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    net = enas4d.create_supernet(args.supernet, num_classes=10, num_stages=args.num_stages).train()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)  # (N, 3, S, S)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9, nesterov=True)
    meta = {"name": "random", "cfg": {}, "mean": [0.0] * 3, "std": [1.0] * 3, "class_names": [str(i) for i in range(10)],
            "image_size": args.image_size}
    module = SupernetModule(net, sgd, None, meta, n_random=args.n_random)
    opt = sgd(param_groups(net, 5e-5))
    space = net.space
    with net.bn_unchecked():  # trained from here: its BatchNorm statistics do not matter
        static = net.extract(space.largest()).train()  # plain torch modules, real shapes
    static_opt = sgd(param_groups(static, 5e-5))
    step_counter = iter(range(10**9))

    def sandwich() -> None:
        subnets = module.sampler.sample(next(step_counter))
        total, _ = module.sandwich_loss(x, y, subnets)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    def single(s: enas4d.Subnet) -> Callable[[], None]:
        def run() -> None:
            net.set_subnet(s)
            loss, _ = multi_exit_loss(net(x), y, module.exit_weights, 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    def plain_static() -> None:
        logits = static(x)
        loss = sum(F.cross_entropy(z, y, label_smoothing=0.1) for z in logits) / len(logits)
        static_opt.zero_grad(set_to_none=True)
        loss.backward()
        static_opt.step()

    kinds = {"sandwich": sandwich, "supernet largest": single(space.largest()),
             "supernet smallest": single(space.smallest()), "static largest": plain_static}
    if args.s2dnas_grow:
        kinds.update(_grow_steps(x, y, sgd, meta))
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.warmup + args.steps):
        for name, fn in kinds.items():  # interleaved: noise hits every kind alike
            t = _timed(fn)
            if i >= args.warmup:
                times[name].append(t)

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["static largest"]
    print(f"{args.supernet}, {args.num_stages} exits, batch {args.batch_size} at {args.image_size}px, "
          f"n_random={args.n_random}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'step':<20}{'s/step':>10}{'images/s':>12}{'x static':>10}")
    for name, t in med.items():
        print(f"{name:<20}{t:>10.4f}{args.batch_size / t:>12.1f}{t / base:>10.2f}")
    print(f"ratio: one sandwich step takes {med['sandwich'] / base:.2f}x a plain static step of the largest subnet "
          f"({2 + args.n_random} subnets per step)")
    if args.s2dnas_grow:
        print(f"ratio: one grown S2DNAS fine-tuning step takes {med['s2dnas grow'] / med['static resnet20']:.2f}x "
              "a plain static ResNet-20 step")


def _grow_steps(x: torch.Tensor, y: torch.Tensor, sgd: Callable, meta: dict) -> dict[str, Callable[[], None]]:
    """The grown S2DNAS fine-tuning step (as enas4d-train runs it) and the static ResNet-20 step."""
    from enas4d.transform import from_static
    from enas4d.transform.s2dnas import frozen_static_training

    static = enas4d.create_supernet("resnet20_static", num_classes=10, num_stages=1).train()
    teacher = enas4d.create_supernet("resnet20_static", num_classes=10, num_stages=1).eval()
    grown = from_static(teacher, 3, width_mults=(0.5, 0.75, 1.0), depths=(1, 2, 3), grow=(0.5, 0.25),
                        fixed_static=True)
    module = SupernetModule(grown, sgd, None, meta, n_random=0, teacher_net=teacher,
                            **frozen_static_training(grown))
    opts = {"grow": sgd(param_groups(grown, 5e-4)), "static": sgd(param_groups(static, 5e-4))}
    steps = iter(range(10**9))

    def grow_step() -> None:
        total, _ = module.sandwich_loss(x, y, module.sampler.sample(next(steps)))
        opts["grow"].zero_grad(set_to_none=True)
        total.backward()
        opts["grow"].step()

    def static_step() -> None:
        loss = F.cross_entropy(static(x)[-1], y, label_smoothing=0.1)
        opts["static"].zero_grad(set_to_none=True)
        loss.backward()
        opts["static"].step()

    return {"s2dnas grow": grow_step, "static resnet20": static_step}


if __name__ == "__main__":
    main()
