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
        examples=("skipkit transformers --quick", "skipkit transformers --depths 2,6,12"),
        help="no skip / post-norm / pre-norm / hyper / mHC transformers on associative recall",
        description="Train transformers with no skip, post-norm, pre-norm, hyper-connection "
        "and mHC residual streams at several depths on a procedurally generated associative "
        "recall task, and write an HTML report (curves, table, gradient flow, mixing gains) "
        "with results.json to --out.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument(
        "--depths",
        type=_depths,
        default=None,
        help=f"comma-separated depths, each 1..{MAX_TRANSFORMER_DEPTH} "
        "(default: 2,6; --quick: 1,3)",
    )
    p.add_argument(
        "--steps",
        type=integer(1, 1_000_000),
        default=None,
        help="training steps per model (default: 500; --quick: 60)",
    )
    add_out(p, "transformers", resume=None)
