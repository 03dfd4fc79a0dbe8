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
from pathlib import Path

import torch
from bench_transformer import lm, step_fn, timed  # the same model, step and timer

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the git revision to compare against")
    p.add_argument("--residual", choices=("hyper", "mhc"), default="hyper")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=None, help="default: max(4, width // 64)")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cpu", help="on CUDA: synchronized, wall time")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        old = old_streams(args.rev, Path(tmp))
        if args.heads is None:
            args.heads = max(4, args.width // 64)

        new = lm(args, args.residual).to(device)
        then = copy.deepcopy(new)
        for m in then.modules():
            if isinstance(m, HyperConnection):
                m.__class__ = old.HyperConnection  # type: ignore[attr-defined]
            elif isinstance(m, StreamMix):
                m.__class__ = old.StreamMix  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, args.vocab, (args.batch, args.context), generator=g).to(device)
        with torch.no_grad():
            torch.testing.assert_close(then(idx), new(idx))  # the same function
        models = {"add": lm(args, "add").to(device), "rev": then, "new": new}
        steps = {
            k: step_fn(m, idx, idx, torch.optim.AdamW(m.parameters(), lr=1e-4), lm_loss=True)
            for k, m in models.items()
        }
        for step in steps.values():
            step()
            step()
        times: dict[str, list[float]] = {k: [] for k in steps}
        names = list(steps)
        for r in range(args.repeats):
            for k in names if r % 2 == 0 else names[::-1]:
                wall, cpu = timed(steps[k], device, 1)
                times[k].append(wall if cuda else cpu)

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
