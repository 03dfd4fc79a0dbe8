"""Parser of ``skipkit transformers`` (see :mod:`skipkit.experiments.transformer`).

It lives outside the experiment module (which imports torch) so that ``skipkit --help`` stays
torch-free; the handler, :func:`skipkit.experiments.transformer.run_command`, is imported
when the command runs (see :data:`skipkit.cli.HANDLERS`).
"""

from __future__ import annotations

import argparse
from typing import Any

from skipkit._cliargs import add_out, add_parser, integer

__all__ = ["MAX_TRANSFORMER_DEPTH", "add_parsers"]

MAX_TRANSFORMER_DEPTH = 96
"""Deeper stacks of the experiment's width take hours on a CPU; refused at parse time."""


def _depths(text: str) -> tuple[int, ...]:
    parse = integer(1, MAX_TRANSFORMER_DEPTH)
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated depths such as 2,6; got {text!r}"
        )
    return tuple(parse(p) for p in parts)


def add_parsers(sub: Any) -> None:
    """``skipkit transformers``: the CLI's extension hook (see :data:`skipkit.cli.EXTENSIONS`)."""
    p = add_parser(
        sub,
        "transformers",
        examples=("skipkit transformers --quick", "skipkit transformers --out runs/transformers"),
        help="no skip / post-norm / pre-norm / hyper / mHC transformers on associative recall",
        description="Train transformers with no skip, post-norm, pre-norm, hyper-connection "
        "and mHC residual streams at several depths on a procedurally generated associative "
        "recall task (6 key-value pairs of 16 keys and 16 values, one token per pair, then a "
        "query key; width 64, 4 heads, AdamW lr 1e-3, no warm-up), and write an HTML report "
        "(curves, table, gradient flow, mixing gains, findings) with results.json, which "
        "holds every number the report shows, to --out. The default run takes about 7 "
        "minutes of CPU time in one thread.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes for a smoke test, well under a minute: depths 1,3, 3 pairs of 8 keys "
        "and 8 values, width 32, 100 steps",
    )
    p.add_argument(
        "--depths",
        type=_depths,
        default=None,
        help=f"comma-separated depths (blocks of attention + MLP), each 1..{MAX_TRANSFORMER_DEPTH} "
        "(default: 2,6; --quick: 1,3). Time grows with depth; an mHC model costs about 7x a "
        "pre-norm one",
    )
    p.add_argument(
        "--steps",
        type=integer(1, 1_000_000),
        default=None,
        help="training steps per model, batch 32 (default: 1000, about 7 CPU minutes for the "
        "default depths; --quick: 100)",
    )
    p.add_argument(
        "--seed", type=integer(0, 2**31 - 1), default=None, help="data and weights (default: 0)"
    )
    p.add_argument(
        "--on-nan",
        choices=("stop", "skip"),
        default="stop",
        help="a non-finite training loss stops that model (the report shows it; the other "
        "models go on) or skips that batch",
    )
    add_out(p, "transformers", resume=None)
