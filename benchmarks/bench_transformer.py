"""Transformer train steps: skipkit's residual stream against hand-written and single-stream.

Run by hand (not a test)::

    python benchmarks/bench_transformer.py                      # CPU, the sizes below
    python benchmarks/bench_transformer.py --device cuda --batch 64 --context 256 --width 512
    python benchmarks/bench_transformer.py --json out.json
    python benchmarks/bench_transformer.py --only streams --width 512 --heads 8 --context 128
    python benchmarks/bench_transformer.py --only streams --compile    # inductor, all variants

Two comparisons, in one run:

1. **block**: a stack of ``depth`` pre-norm blocks built from ``skipkit.Residual(..., norm=
   "layer")`` (the blocks of ``transformer_lm``) against the same stack written by hand
   (``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``, nanoGPT's forward) sharing the very same
   submodules, so only the residual wrapper differs. Target <= 1.02.
2. **streams**: ``transformer_lm(residual="hyper")`` and ``"mhc"`` (4 streams, dynamic) against
   ``residual="add"``, same sizes. Target <= 1.15. With ``--control`` a second ``"add"`` model
   runs alongside (an A/A control: how far from 1 the run's noise alone puts a ratio), and a
   second hand-written stack in the block comparison. With ``--floor`` a ``"floor"`` model
   runs too: the hyper model with every hyper-connection replaced by :class:`CarryStreams`
   (the 4 streams carried with fixed weights, nothing learned), about the least an eager
   multi-stream residual pays.
   ``tests/models/test_transformer.py`` checks without a clock that the skipkit blocks
   dispatch exactly the hand-written ATen ops.

A train step is forward, loss, backward and an optimizer step (SGD for the block stack,
AdamW for the models). The variants of each comparison run interleaved (A B C, then C B A,
...) after warm-up steps, and the ratio of medians is reported, in wall time and in the
process's CPU time (``process_time``; on a shared machine the steadier one), with the median
and the range of the per-round ratios (each variant against the baseline timed next to it in
the same round: "paired", the figure to quote on a noisy machine). On CUDA the step is
synchronized and wall time is the figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from skipkit.models import create
from skipkit.models.transformer import Transformer
from skipkit.streams import HyperConnection

TARGET_BLOCK = 1.02
TARGET_STREAMS = 1.15


class HandWritten(nn.Module):
    """The pre-norm stack of ``model`` written out by hand around the same submodules."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.parts = nn.ModuleList(
            nn.ModuleList([b.attn.norm, b.attn.body, b.mlp.norm, b.mlp.body]) for b in model.blocks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for ln_1, attn, ln_2, mlp in self.parts:  # type: ignore[misc]
            x = x + attn(ln_1(x))
            x = x + mlp(ln_2(x))
        return x


class SkipkitStack(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.blocks = model.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class CarryStreams(nn.Module):
    """``(N, T, S, D) -> (N, T, S, D)``: ``H + f(norm(mean_i H_i))`` on every stream, the
    layer and norm of a :class:`~skipkit.HyperConnection` with fixed, equal weights in place
    of the learned ones. Forward it reads the streams once for the layer input and once for
    ``H'``, which it writes; backward it sums ``H'``'s gradient over the streams for ``f`` and
    adds the layer input's (broadcast) to it. Any multi-stream residual whose layer reads and
    writes every stream does about this much, so its ratio to ``"add"`` is the floor of the
    streams comparison."""

    def __init__(self, hc: HyperConnection) -> None:
        super().__init__()
        self.norm, self.layer = hc.norm, hc.layer

    def forward(self, h: torch.Tensor, **kwargs: object) -> torch.Tensor:
        x = h.mean(dim=-2)
        if self.norm is not None:
            x = self.norm(x)
        out: torch.Tensor = h + self.layer(x, **kwargs).unsqueeze(-2)
        return out


def floor_lm(args: argparse.Namespace) -> Transformer:
    """``lm(args, "hyper")`` with each hyper-connection replaced by :class:`CarryStreams`."""
    model = lm(args, "hyper")
    for block in model.blocks:
        for name in ("attn", "mlp"):
            hc = getattr(block, name)
            assert isinstance(hc, HyperConnection)
            setattr(block, name, CarryStreams(hc))
    return model


def lm(args: argparse.Namespace, residual: str) -> Transformer:
    torch.manual_seed(0)
    model = create(
        "transformer_lm",
        vocab_size=args.vocab,
        context=args.context,
        depth=args.depth,
        width=args.width,
        heads=args.heads,
        residual=residual,
    )
    assert isinstance(model, Transformer)
    return model


def step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, lm_loss: bool
) -> Callable[[], None]:
    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten()) if lm_loss else out.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step: Callable[[], None], device: torch.device, iters: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over ``iters`` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - w) / iters, (time.process_time() - c) / iters


def compare(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int, iters: int
) -> dict[str, dict[str, float]]:
    """Median wall / CPU seconds per step of each variant, interleaved, order alternating;
    ``paired_<clock>``, ``lo_<clock>``, ``hi_<clock>``: the median, smallest and largest of
    the per-round ratios to the first variant (each round's ratio pairs two timings taken
    next to each other, so a slow moment of the machine hits both)."""
    for step in steps.values():
        step()
        step()
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(timed(steps[name], device, iters))
    base = samples[names[0]]
    out: dict[str, dict[str, float]] = {}
    for name, vals in samples.items():
        out[name] = {
            "wall": statistics.median(s[0] for s in vals),
            "cpu": statistics.median(s[1] for s in vals),
        }
        for i, clock in enumerate(("wall", "cpu")):
            ratios = [v[i] / b[i] for v, b in zip(vals, base, strict=True)]
            out[name][f"lo_{clock}"], out[name][f"hi_{clock}"] = min(ratios), max(ratios)
            out[name][f"paired_{clock}"] = statistics.median(ratios)
    return out


def ratio_line(
    kind: str, results: dict[str, dict[str, float]], base: str, name: str, clock: str, target: float
) -> str:
    a, b = results[base], results[name]
    return (
        f"{kind:8s} {base} {a[clock] * 1e3:8.1f} ms  {name} {b[clock] * 1e3:8.1f} ms  ratio "
        f"{b[clock] / a[clock]:.3f}, paired {b['paired_' + clock]:.3f} (rounds "
        f"{b['lo_' + clock]:.2f}-{b['hi_' + clock]:.2f}; target <= {target})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=("block", "streams"), default=None, help="one comparison")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the models of the streams comparison (compiled at the warm-up "
        "steps, minutes for mHC on a CPU)",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="time a second hand-written stack in the block comparison and a second "
        "residual='add' model in the streams comparison (A/A controls: their ratios to the "
        "first are the noise floor of the run)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="time a 'floor' model in the streams comparison: the hyper model carrying its "
        "streams with no mixing (CarryStreams), the least a multi-stream residual costs",
    )
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, args.vocab, (args.batch, args.context), generator=g).to(device)

    clock = "wall" if device.type == "cuda" else "cpu"
    lines = [
        f"device {device}, torch {torch.__version__}, {platform.machine()}, threads "
        f"{torch.get_num_threads()}, batch {args.batch}, context {args.context}, width "
        f"{args.width}, depth {args.depth}, {args.repeats} rounds x {args.iters} steps; ratios "
        f"of {clock} medians{'; streams compiled' if args.compile else ''}",
    ]
    block: dict[str, dict[str, float]] = {}
    if args.only in (None, "block"):
        base = lm(args, "add").to(device).train()
        hand, ours = HandWritten(base), SkipkitStack(base)
        h = torch.randn(args.batch, args.context, args.width, generator=g).to(device)
        with torch.no_grad():
            torch.testing.assert_close(hand(h), ours(h))  # the same function, the same weights
        stacks: list[tuple[str, nn.Module]] = [("hand-written", hand), ("skipkit", ours)]
        if args.control:  # the same hand-written stack again
            stacks.insert(1, ("control", HandWritten(base)))
        block_steps = {
            name: step_fn(m, h, idx, torch.optim.SGD(m.parameters(), lr=1e-3), lm_loss=False)
            for name, m in stacks
        }
        block = compare(block_steps, device, args.repeats, args.iters)
        for name, _ in stacks[1:]:
            lines.append(ratio_line("block", block, "hand-written", name, clock, TARGET_BLOCK))

    streams: dict[str, dict[str, float]] = {}
    if args.only in (None, "streams"):
        variants = ("add",) + ("control",) * args.control + ("floor",) * args.floor
        variants += ("hyper", "mhc")
        models = {
            r: (floor_lm(args) if r == "floor" else lm(args, "add" if r == "control" else r))
            .to(device)
            .train()
            for r in variants
        }
        stream_steps = {
            r: step_fn(
                torch.compile(m) if args.compile else m,
                idx,
                idx,
                torch.optim.AdamW(m.parameters(), lr=1e-4),
                lm_loss=True,
            )
            for r, m in models.items()
        }
        streams = compare(stream_steps, device, args.repeats, args.iters)
        for r in variants[1:]:
            lines.append(ratio_line("streams", streams, "add", r, clock, TARGET_STREAMS))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "block": block, "streams": streams}, f, indent=2)


if __name__ == "__main__":
    main()
