"""One residual sublayer, forward and backward: ``Residual`` against the multi-stream skips.

Run by hand (not a test)::

    python benchmarks/bench_sublayer.py --width 8 --tokens 64       # the fixed cost per sublayer
    python benchmarks/bench_sublayer.py --width 512 --tokens 1024   # the part that grows with D

The body is one ``nn.Linear(D, D)`` with a pre-``LayerNorm``, shared by every variant:

- ``add``: ``skipkit.Residual(body, norm="layer")`` on ``(N, T, D)``;
- ``floor``: ``H + f(norm(mean_i H_i))`` on the stream tensor ``(N, T, 4, D)``
  (``bench_transformer.CarryStreams``: the streams carried with fixed weights);
- ``static``, ``dynamic``, ``mhc``: ``skipkit.HyperConnection(body, 4, ...)`` with static
  coefficients, dynamic ones, and dynamic under the Sinkhorn constraint.

Dynamic projections start at zero, so this sets them to small random values: the numbers
then are those of a trained layer. A step is the forward and the backward for the input and
every parameter (nothing accumulates: gradients are returned, not stored). The variants run
interleaved (A B C, then C B A, ...) and the medians of the process CPU time per step and of
the per-round ratios to ``add`` are printed; on CUDA synchronized wall time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable

import torch
from bench_transformer import CarryStreams, timed  # the same floor and timer
from torch import nn

import skipkit as sk

STREAMS = 4


def variants(width: int, device: torch.device) -> dict[str, tuple[nn.Module, bool]]:
    """Name -> (module, whether it takes the stream tensor), all around the same body."""
    torch.manual_seed(0)
    body = nn.Linear(width, width)
    norm = nn.LayerNorm(width)
    res = sk.Residual(body, norm=norm)
    out: dict[str, tuple[nn.Module, bool]] = {"add": (res, False)}
    kinds = {"static": (False, None), "dynamic": (True, None), "mhc": (True, "sinkhorn")}
    for name, (dynamic, constraint) in kinds.items():
        hc = sk.HyperConnection(
            body, STREAMS, layer_index=1, dynamic=dynamic, constraint=constraint, norm=norm
        )
        with torch.no_grad():
            for p in (hc.proj, hc.shortcut.proj):
                if p is not None:
                    p.normal_(0.0, 0.02)
        out[name] = (hc, True)
        if name == "static":
            out["floor"] = (CarryStreams(hc), True)
    return {k: (m.to(device), s) for k, (m, s) in out.items()}


def step_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]
    grad = torch.randn_like(module(x))

    def step() -> None:
        torch.autograd.grad(module(x), [x, *params], grad, allow_unused=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--tokens", type=int, default=512, help="N * T")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1, args.tokens, args.width, generator=g).to(device).requires_grad_()
    xs = torch.randn(1, args.tokens, STREAMS, args.width, generator=g).to(device)
    xs.requires_grad_()
    steps = {
        name: step_fn(m, xs if streams else x1)
        for name, (m, streams) in variants(args.width, device).items()
    }
    names = ["add", "floor", "static", "dynamic", "mhc"]
    for name in names:
        steps[name]()
    samples: dict[str, list[float]] = {k: [] for k in names}
    clock = 0 if device.type == "cuda" else 1
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(timed(steps[name], device, args.iters)[clock])
    print(
        f"device {device}, torch {torch.__version__}, {platform.machine()}, threads "
        f"{torch.get_num_threads()}, width {args.width}, tokens {args.tokens}, {STREAMS} "
        f"streams, {args.repeats} rounds x {args.iters} steps; "
        f"{'wall' if clock == 0 else 'cpu'} ms per step, paired ratio to add"
    )
    for name in names:
        ratios = [v / b for v, b in zip(samples[name], samples["add"], strict=True)]
        print(
            f"{name:8s} {statistics.median(samples[name]) * 1e3:9.3f} ms  "
            f"paired {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
