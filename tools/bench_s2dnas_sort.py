"""What ordering channels by importance buys the S2DNAS split (issue 9), measured side by side.

Splits a trained static network (an enas4d checkpoint of e.g. ``resnet20_static``) into K stages
twice, with and without importance sorting, and prints every exit's validation accuracy of the
largest subnet after BatchNorm re-estimation: before any fine-tuning, and after ``--steps``
fine-tuning steps of each (same batches, same seed, static teacher), so the two start points are
compared as training would use them.

    python tools/bench_s2dnas_sort.py --ckpt outputs/cifar10_static/checkpoints/last.ckpt --steps 100
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch

from enas4d.checkpoint import load_supernet
from enas4d.checkpoint import build_datamodule
from enas4d.nn.bn import BNEstimationSet, evaluate_exits
from enas4d.training.module import SupernetModule
from enas4d.transform import from_static


def main(argv: list[str] | None = None) -> int:
    """Print per-exit accuracy with and without sorting (before and after fine-tuning)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint of a static (K = 1) network")
    p.add_argument("--stages", type=int, default=3, help="K (default 3)")
    p.add_argument("--steps", type=int, default=0, help="fine-tuning steps of each (default 0)")
    p.add_argument("--lr", type=float, default=0.02, help="constant fine-tuning learning rate (default 0.02)")
    p.add_argument("--val-images", type=int, default=2000, help="validation images scored (default 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    static, meta = load_supernet(args.ckpt)
    dm = build_datamodule(meta, {})
    dm.setup("fit")
    bn_set = BNEstimationSet(dm.bn_dataloader(1000))
    val = []
    for x, y in dm.val_dataloader():
        val.append((x, y))
        if sum(b[1].shape[0] for b in val) >= args.val_images:
            break
    data = iter(dm.train_dataloader())
    batches = [next(data) for _ in range(args.steps)]
    print(f"static {static.name}: exit accuracy {evaluate_exits(static, static.space.largest(), bn_set, val)}")
    print(f"{'sorted':>7} | {'steps':>5} | " + " | ".join(f"exit {k + 1}" for k in range(args.stages)))
    for sort in (False, True):
        torch.manual_seed(0)
        net = from_static(static, args.stages, width_mults=(0.5, 0.75, 1.0), depths=(1, 2, 3), sort=sort)
        acc = evaluate_exits(net, net.space.largest(), bn_set, val)
        print(f"{str(sort):>7} | {0:>5} | " + " | ".join(f"{100 * a:5.2f}%" for a in acc), flush=True)
        if not batches:
            continue
        sgd = partial(torch.optim.SGD, lr=args.lr, momentum=0.9, nesterov=True)
        module = SupernetModule(net, sgd, None, meta.data, n_random=1, teacher_net=static, weight_decay=5e-4)
        opt = sgd(net.parameters())
        net.train()
        for step, (x, y) in enumerate(batches):
            loss, _ = module.sandwich_loss(x, y, module.sampler.sample(step))
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = evaluate_exits(net, net.space.largest(), bn_set, val)
        print(f"{str(sort):>7} | {args.steps:>5} | " + " | ".join(f"{100 * a:5.2f}%" for a in acc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
