"""Cost of skipkit.diagnostics.loss_landscape against plain evaluation passes.

The landscape's total time (directions, fingerprint, moving the weights for every point,
restoring them, everything) is compared with ``points x`` the time of one evaluation pass of
the same model over the same data (eval mode, no autograd). Target: ratio <= 1.1.

In each of ``--rounds`` rounds the single-pass time is the median of ``--repeats`` passes
measured just before *and* just after the landscape, so a machine that speeds up or slows down
in between does not bias that round's ratio; the median ratio over the rounds is reported.

    python benchmarks/bench_landscape.py [--model resnet20] [--examples 1000] [--steps 7]
        [--rounds 3] [--threads 1] [--device cpu|cuda] [--checkpoint]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import skipkit.models as models
from skipkit.data import mnist1d
from skipkit.diagnostics.landscape import evaluate, loss_landscape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=7, help="grid points per axis (2-D)")
    p.add_argument("--repeats", type=int, default=5, help="single passes timed, before + after")
    p.add_argument("--rounds", type=int, default=3, help="landscapes timed (median ratio)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", action="store_true", help="also write a resume checkpoint")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    train, _ = mnist1d()
    x, y = (t[: args.examples].to(device) for t in train.tensors)
    torch.manual_seed(0)
    model = models.create(args.model, dims=1, in_channels=1, num_classes=10).to(device).eval()
    loss_fn = nn.CrossEntropyLoss()
    batches = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size])
        for i in range(0, len(x), args.batch_size)
    ]

    def one_pass() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        evaluate(model, batches, loss_fn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    one_pass()  # warm-up (allocator, kernels)
    ratios, totals, singles = [], [], []
    for _ in range(args.rounds):
        before = [one_pass() for _ in range(args.repeats)]
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ckpt.npz" if args.checkpoint else None
            t0 = time.perf_counter()
            land = loss_landscape(
                model,
                (x, y),
                loss_fn,
                steps=args.steps,
                batch_size=args.batch_size,
                checkpoint=ckpt,
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
        after = [one_pass() for _ in range(args.repeats)]
        single = statistics.median(before + after)
        ratios.append(total / (land.loss.size * single))
        totals.append(total)
        singles.append(single)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model} ({params / 1e6:.2f}M params), {len(x)} examples in batches of "
        f"{args.batch_size}, {device}, {torch.get_num_threads()} thread(s)"
    )
    print(f"one evaluation pass: {', '.join(f'{1000 * s:.1f}' for s in singles)} ms (per round)")
    print(
        f"landscape {args.steps}x{args.steps} = {land.loss.size} points: "
        f"{', '.join(f'{t:.2f}' for t in totals)} s (per round)"
    )
    print(
        f"ratio total / (points x one pass): median {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})  [target <= 1.1]"
        + ("  (with checkpoint)" if args.checkpoint else "")
    )


if __name__ == "__main__":
    main()
