"""A/B of two versions of ``skipkit.streams``: the working tree's ``HyperConnection`` against
the one at a git revision, in one process, on the same weights.

Run by hand (not a test)::

    python benchmarks/bench_streams_ab.py --rev 6924ec9 --residual hyper
    python benchmarks/bench_streams_ab.py --rev 6924ec9 --residual mhc --width 512 --context 128

``streams.py`` and ``_streams_autograd.py`` are read from the revision with ``git show`` into
a temporary folder and imported under other names. A copy of ``transformer_lm`` then gets
their classes swapped in (the same parameters, so the same weights). ``add``, the revision's
and the working tree's models train interleaved (A B C, then C B A, ...), one step per round,
and the medians of the paired per-round ratios (process CPU time; on CUDA synchronized wall
time) are printed.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from skipkit.models import create
from skipkit.streams import HyperConnection, StreamMix


def old_streams(rev: str, folder: Path) -> object:
    """The revision's ``skipkit.streams`` as a module named ``streams_at_rev``."""
    root = Path(__file__).resolve().parents[1]
    for name, target in (("_streams_autograd", "autograd_at_rev"), ("streams", "streams_at_rev")):
        text = subprocess.run(
            ["git", "show", f"{rev}:src/skipkit/{name}.py"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = text.replace("from skipkit._streams_autograd import", "from autograd_at_rev import")
        (folder / f"{target}.py").write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("streams_at_rev")


def step_fn(model: nn.Module, idx: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        out = model(idx)
        loss = F.cross_entropy(out.flatten(0, 1), idx.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the git revision to compare against")
    p.add_argument("--residual", choices=("hyper", "mhc"), default="hyper")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cpu", help="on CUDA: synchronized, wall time")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        old = old_streams(args.rev, Path(tmp))
        heads = max(4, args.width // 64)

        def lm(residual: str) -> nn.Module:
            torch.manual_seed(0)
            return create(
                "transformer_lm",
                vocab_size=256,
                context=args.context,
                depth=args.depth,
                width=args.width,
                heads=heads,
                residual=residual,
            ).to(device)

        new = lm(args.residual)
        then = copy.deepcopy(new)
        for m in then.modules():
            if isinstance(m, HyperConnection):
                m.__class__ = old.HyperConnection  # type: ignore[attr-defined]
            elif isinstance(m, StreamMix):
                m.__class__ = old.StreamMix  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, 256, (args.batch, args.context), generator=g).to(device)
        with torch.no_grad():
            torch.testing.assert_close(then(idx), new(idx))  # the same function
        steps = {
            "add": step_fn(lm("add"), idx),
            "rev": step_fn(then, idx),
            "new": step_fn(new, idx),
        }
        for step in steps.values():
            step()
            step()
        times: dict[str, list[float]] = {k: [] for k in steps}
        names = list(steps)
        for r in range(args.repeats):
            for k in names if r % 2 == 0 else names[::-1]:
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter() if cuda else time.process_time()
                steps[k]()
                if cuda:
                    torch.cuda.synchronize()
                times[k].append((time.perf_counter() if cuda else time.process_time()) - t)

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"{args.residual}, width {args.width}, context {args.context}, {args.repeats} rounds: "
        f"add {med['add']:.1f} ms, {args.rev} {med['rev']:.1f} ms, working tree "
        f"{med['new']:.1f} ms; paired {args.rev}/add {paired('rev', 'add'):.3f}, "
        f"new/add {paired('new', 'add'):.3f}, new/{args.rev} {paired('new', 'rev'):.3f}"
    )


if __name__ == "__main__":
    main()
