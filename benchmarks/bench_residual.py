"""Residual(body) with an automatic projection vs the same block written by hand.

Forward + backward of a BasicBlock-like body (3x3 conv-BN-ReLU-3x3 conv-BN, stride 2,
channels doubling), so the skip needs a 1x1 conv + BN projection that skipkit plans itself.
Both blocks hold the same weights; they are timed interleaved in one process and the ratio of
medians is reported (target <= 1.02).

    python benchmarks/bench_residual.py [--device cpu|cuda] [--batch 32] [--size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import skipkit as sk


class HandWritten(nn.Module):
    """The reference: torchvision-style BasicBlock with a projection ``downsample``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def skipkit_block(c_in: int, c_out: int, stride: int, size: int) -> sk.Residual:
    body = nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_out),
    )
    return sk.Residual(body, post=nn.ReLU(inplace=True), in_shape=(1, c_in, size, size))


def copy_weights(ours: sk.Residual, ref: HandWritten) -> None:
    body = ours.body
    assert isinstance(ours.shortcut, nn.Sequential)
    pairs = [
        (body[0], ref.conv1),
        (body[1], ref.bn1),
        (body[3], ref.conv2),
        (body[4], ref.bn2),
        (ours.shortcut[0], ref.downsample[0]),
        (ours.shortcut[1], ref.downsample[1]),
    ]
    for a, b in pairs:
        a.load_state_dict(b.state_dict())


def step_time(model: nn.Module, x: torch.Tensor, iters: int) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        model(x).sum().backward()
    sync()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    c = args.channels
    ref = HandWritten(c, 2 * c, 2).to(args.device)
    ours = skipkit_block(c, 2 * c, 2, args.size).to(args.device)
    copy_weights(ours, ref)
    x = torch.randn(args.batch, c, args.size, args.size, device=args.device)
    with torch.no_grad():
        ref.eval(), ours.eval()
        assert torch.allclose(ref(x), ours(x), atol=1e-5), "blocks differ"
        ref.train(), ours.train()
    for m in (ref, ours):  # warm-up
        step_time(m, x, 3)
    ratios, t_ref, t_ours = [], [], []
    for i in range(args.repeats):
        # Alternate the order so drifts in machine load hit both sides alike.
        order = [(ref, t_ref), (ours, t_ours)] if i % 2 == 0 else [(ours, t_ours), (ref, t_ref)]
        for model, bucket in order:
            bucket.append(step_time(model, x, args.iters))
        ratios.append(t_ours[-1] / t_ref[-1])
    print(
        f"device={args.device} batch={args.batch} {c}->{2 * c} ch, {args.size}px, stride 2; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"hand-written  median {statistics.median(t_ref) * 1e3:8.3f} ms/step")
    print(f"skipkit       median {statistics.median(t_ours) * 1e3:8.3f} ms/step")
    print(
        f"ratio skipkit/hand-written: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {args.repeats} repeats)"
    )


if __name__ == "__main__":
    main()
