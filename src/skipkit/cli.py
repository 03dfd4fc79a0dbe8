"""The ``skipkit`` command line.

::

    skipkit demo [--quick]              plain vs residual on MNIST-1D -> runs/demo/<date>/
    skipkit degradation --depths 20,56  the same experiment with every knob
    skipkit train --model resnet20      train one registered model, with checkpoints
    skipkit models [PATTERN]            list the model registry

Other modules add subcommands: each module named in :data:`EXTENSIONS` that exists exposes
``add_parsers(subparsers)``. A command's handler, ``handler(args) -> int`` returning the exit
status, is its entry in :data:`HANDLERS` (``"module:function"``, imported only when that
command runs, so that parsing and ``--help`` import no torch), or the ``func`` an extension's
parser sets with ``set_defaults(func=handler)``. A user mistake (``ValueError``,
``TypeError``, ``FileNotFoundError``) becomes one ``skipkit: error: ...`` line and status 2; a
non-finite training loss one line and status 3; ``--traceback`` shows the full trace instead.

Every command writes into a run folder (:func:`skipkit._runs.open_run`): the default ``--out``
is a new folder per run; a folder holding an earlier run or foreign files is refused unless
``--resume`` or ``--overwrite`` says what to do. Parsing and ``--help`` import no torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import skipkit
from skipkit import _cli_train
from skipkit._cliargs import (
    DEMO_DEPTHS,
    MAX_DEPTH,
    QUICK_DEPTHS,
    QUICK_EPOCHS,
    Formatter,
    Parser,
    add_data,
    add_out,
    add_parser,
    add_recipe,
    echo,
    example,
    int_list,
    integer,
    key_value,
    positive_int,
    say,
)
from skipkit._lazy import load

__all__ = [
    "EXTENSIONS",
    "HANDLERS",
    "build_parser",
    "echo",
    "key_value",
    "main",
    "positive_int",
    "say",
]

EXTENSIONS = ("skipkit._cli_diagnostics", "skipkit._cli_transformer")
"""Modules whose ``add_parsers(subparsers)`` adds subcommands (skipped when absent)."""

HANDLERS = {
    "demo": "skipkit.experiments.cli:cmd_demo",
    "degradation": "skipkit.experiments.cli:cmd_degradation",
    "train": "skipkit.train.cli:cmd_train",
    "models": "skipkit.models.cli:cmd_models",
    "gradflow": "skipkit.diagnostics.cli:cmd_gradflow",
    "landscape": "skipkit.diagnostics.cli:cmd_landscape",
    "advise": "skipkit.diagnostics.cli:cmd_advise",
    "transformers": "skipkit.experiments.transformer:run_command",
}
"""Each command's handler as ``"module:function"``. The handler modules import torch, so
each is imported (by :func:`skipkit._lazy.load`) only when its command runs; the parser
modules import only the standard library."""

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    metadata = load("importlib.metadata")  # only for --version: --help stays fast
    try:
        return str(metadata.version("skipkit"))
    except metadata.PackageNotFoundError:  # run from a source tree
        return str(skipkit.__version__)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        echo(f"skipkit {_version()}")  # looked up only when asked for
        parser.exit(0)


# ------------------------------------------------------------------------------------ parsers


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with the subcommands of :data:`EXTENSIONS` that are installed."""
    parser = Parser(
        prog="skipkit",
        description="Skip connections for PyTorch: experiments, training and diagnostics.",
        formatter_class=Formatter,
        epilog=example("skipkit demo --quick", "skipkit train --model resnet20 --epochs 5"),
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("--traceback", action="store_true", help="show the full trace on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (_demo_parser, _degradation_parser, _cli_train.add_parsers, _models_parser):
        register(sub)
    for name in EXTENSIONS:
        try:
            module = load(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that extension is not part of this install
            raise
        module.add_parsers(sub)
    return parser


def _demo_parser(sub: Any) -> None:
    p = add_parser(
        sub,
        "demo",
        examples=("skipkit demo --quick", "skipkit demo --out runs/my-demo"),
        help="the degradation problem in minutes: plain vs residual nets on MNIST-1D",
        description="Train 20- and 56-layer plain networks and their residual twins on "
        "MNIST-1D and write a self-contained HTML report (with plots, a table and an "
        "explanation) to --out.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a seconds-long smoke run (depths {QUICK_DEPTHS}, {QUICK_EPOCHS} epochs)",
    )
    p.add_argument(
        "--workers",
        type=integer(1, 256),
        default=None,
        help="parallel processes (default: one per CPU core, 1 with --quick)",
    )
    p.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="leave the gradient-flow and loss-landscape sections out of the report",
    )
    add_out(p, "demo")


def _degradation_parser(sub: Any) -> None:
    p = add_parser(
        sub,
        "degradation",
        examples=(
            "skipkit degradation --depths 20,56 --epochs 30 --out runs/deg",
            "skipkit degradation --out runs/deg --resume      # after an interruption",
        ),
        help="train plain and residual twins at several depths, write a report",
        description="The degradation experiment (He et al. 2015, figures 1 and 6) with every "
        "setting exposed. Writes report.html, PNG plots, results.json and one folder per "
        "run (metrics, checkpoints) to --out.",
    )
    p.add_argument(
        "--depths",
        type=int_list,
        default=list(DEMO_DEPTHS),
        help=f"comma-separated depths, each 6n+2, at most {MAX_DEPTH}",
    )
    add_data(p)
    add_recipe(p, epochs=30)
    p.add_argument(
        "--workers",
        type=integer(1, 256),
        default=None,
        help="parallel processes (default: one per CPU core, 1 on CUDA)",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="add gradient-flow and loss-landscape sections to the report",
    )
    add_out(p, "degradation")


def _models_parser(sub: Any) -> None:
    p = add_parser(
        sub,
        "models",
        examples=("skipkit models", "skipkit models 'resnet*'"),
        help="list registered models",
        description="List the names accepted by --model and skipkit.models.create.",
    )
    p.add_argument(
        "pattern", nargs="?", default=None, help="shell pattern, e.g. 'resnet*' (default: all)"
    )


# --------------------------------------------------------------------------------------- main


def _exit_status(exc: BaseException) -> int | None:
    """2 for a user mistake, 3 for a diverged training run, 1 for another OS error."""
    trainer = sys.modules.get("skipkit.train.trainer")
    if trainer is not None and isinstance(exc, trainer.NonFiniteLossError):
        return 3
    if isinstance(exc, ValueError | TypeError | FileNotFoundError):
        return 2
    if isinstance(exc, OSError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skipkit`` command; returns the exit status (0 ok, 2 bad input, 3 the loss
    became non-finite, 1 another I/O error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by Parser
        return exc.code if isinstance(exc.code, int) else 0
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        handler: Handler = args.func if "func" in args else load(HANDLERS[args.command])
        return int(handler(args))
    except KeyboardInterrupt:
        echo("skipkit: interrupted", err=True)
        return 130
    except Exception as exc:
        status = _exit_status(exc)
        if status is None or args.traceback:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        echo(f"skipkit: error: {message}", err=True)
        return status


if __name__ == "__main__":
    sys.exit(main())
