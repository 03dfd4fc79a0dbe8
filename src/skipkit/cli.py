"""The ``skipkit`` command line.

::

    skipkit demo [--quick]              plain vs residual on MNIST-1D -> runs/demo/<date>/
    skipkit degradation --depths 20,56  the same experiment with every knob
    skipkit train --model resnet20      train one registered model, with checkpoints
    skipkit models [PATTERN]            list the model registry

Other modules add subcommands: each module named in :data:`EXTENSIONS` that exists exposes
``add_parsers(subparsers)`` and gives every parser it adds ``set_defaults(func=handler)``, where
``handler(args) -> int`` returns the exit status. A user mistake (``ValueError``,
``TypeError``, ``FileNotFoundError``) becomes one ``skipkit: error: ...`` line and status 2; a
non-finite training loss one line and status 3; ``--traceback`` shows the full trace instead.

Every command writes into a run folder (:func:`skipkit._runs.open_run`): the default ``--out``
is a new folder per run; a folder holding an earlier run or foreign files is refused unless
``--resume`` or ``--overwrite`` says what to do. Parsing and ``--help`` import no torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from skipkit._cliargs import (
    DATASET_NAMES,
    Formatter,
    Parser,
    device,
    echo,
    example,
    int_list,
    integer,
    key_value,
    positive_int,
    real,
    say,
)

__all__ = ["EXTENSIONS", "build_parser", "echo", "key_value", "main", "positive_int", "say"]

EXTENSIONS = ("skipkit._cli_diagnostics", "skipkit._cli_transformer")
"""Modules whose ``add_parsers(subparsers)`` adds subcommands (skipped when absent)."""

DEMO_DEPTHS = (20, 56)
DEMO_EPOCHS = 20
QUICK_DEPTHS = (8, 14)
QUICK_EPOCHS = 2
MAX_DEPTH = 1202  # He et al.'s deepest CIFAR net; deeper ones do not fit a laptop's memory

Handler = Callable[[argparse.Namespace], int]

RESUME_HELP = (
    "continue the run in --out from its newest checkpoint that verifies; the config, model and "
    "data must be those of the run (each difference is listed), only --epochs may change, to "
    "extend the run"
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skipkit")
    except PackageNotFoundError:  # run from a source tree
        import skipkit

        return str(skipkit.__version__)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        echo(f"skipkit {_version()}")  # looked up only when asked for
        parser.exit(0)


# ------------------------------------------------------------------------------------ parsers


def add_out(p: argparse.ArgumentParser, command: str, *, resume: str | None = RESUME_HELP) -> None:
    """``--out``, ``--resume`` (when ``resume`` is its help)/``--overwrite`` and ``--quiet``:
    the run-folder options."""
    g = p.add_argument_group("output (a run folder: see docs/guide_training.md)")
    g.add_argument(
        "--out",
        default=None,
        help=f"output folder (default: a new folder runs/{command}/<date-time>)",
    )
    x = g.add_mutually_exclusive_group()
    if resume is not None:
        x.add_argument("--resume", action="store_true", help=resume)
    else:
        p.set_defaults(resume=False)
    x.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in --out: remove the files an earlier run listed in its manifest "
        "(files skipkit did not write stay)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress output")


def add_recipe(p: argparse.ArgumentParser, *, epochs: int) -> None:
    g = p.add_argument_group("training recipe (defaults: He et al.'s CIFAR ResNet recipe)")
    g.add_argument(
        "--epochs",
        type=integer(1, 100_000),
        default=epochs,
        help="passes over the training set; the one setting --resume may change",
    )
    g.add_argument("--batch-size", type=integer(1, 65_536), default=128, help="examples per step")
    g.add_argument("--lr", type=real(0, 10, low_open=True), default=0.1, help="peak learning rate")
    g.add_argument(
        "--momentum",
        type=real(0, 1, high_open=True),
        default=None,
        help="SGD momentum (default: 0.9; SGD only)",
    )
    g.add_argument("--weight-decay", type=real(0, 1), default=1e-4, help="L2 weight decay")
    g.add_argument(
        "--schedule",
        choices=("onecycle", "cosine", "step", "none"),
        default="onecycle",
        help="learning-rate schedule",
    )
    g.add_argument("--seed", type=integer(0, 2**32 - 1), default=0, help="init and data order")
    g.add_argument(
        "--device",
        type=device,
        default=None,
        help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)",
    )


def add_data(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--dataset`` and ``--data-dir``."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist1d", help=f"one of {', '.join(DATASET_NAMES)}")
    g.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR: folder holding cifar-10-batches-py/ or cifar-100-python/; MNIST-1D: cache "
        "folder (default: $SKIPKIT_CACHE or ~/.cache/skipkit)",
    )
    return g


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
    from skipkit import _cli_train  # it uses this module's helpers

    for register in (_demo_parser, _degradation_parser, _cli_train.add_parsers, _models_parser):
        register(sub)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that extension is not part of this install
            raise
        module.add_parsers(sub)
    return parser


def add_parser(sub: Any, name: str, *, examples: Sequence[str], **kw: Any) -> Any:
    """A subcommand parser with the shared error style, help layout and an example epilog."""
    if "description" in kw:  # the raw layout keeps the epilog's lines; wrap the prose here
        kw["description"] = textwrap.fill(kw["description"], 88)
    return sub.add_parser(
        name, formatter_class=Formatter, epilog=example(*examples), prog=f"skipkit {name}", **kw
    )


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
    p.set_defaults(func=_cmd_demo)


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
    p.set_defaults(func=_cmd_degradation)


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
    p.set_defaults(func=_cmd_models)


# ------------------------------------------------------------------------ shared validation


def out_folder(args: argparse.Namespace) -> None:
    """Refuse an unusable ``--out`` and ``--resume`` without ``--out``, creating nothing."""
    from skipkit._runs import check_out_dir

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out: the folder of the run to continue")
    if args.out is not None:
        check_out_dir(args.out)


def claim_out(args: argparse.Namespace, command: str) -> Path:
    """``--out``, or a new unused folder ``runs/<command>/<date-time>`` (created now)."""
    from skipkit._runs import new_run_dir

    return Path(args.out) if args.out is not None else new_run_dir(Path("runs") / command)


def recipe_options(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options after the checks that need several of them; refuses settings that
    would be recorded but not used."""
    if args.momentum is not None and getattr(args, "optimizer", "sgd") != "sgd":
        raise ValueError("--momentum is an SGD setting; --optimizer adamw does not use it")
    kw: dict[str, Any] = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": 0.9 if args.momentum is None else args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "seed": args.seed,
        "device": args.device,
    }
    return kw


# ----------------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.quick:  # in this process: starting worker interpreters would dominate
        return _degradation(
            args,
            "demo",
            depths=QUICK_DEPTHS,
            epochs=QUICK_EPOCHS,
            workers=args.workers or 1,
            threads=1,
            dataset="mnist1d",
            root=None,
            diagnostics=not args.no_diagnostics,
            quick=True,
        )
    return _degradation(
        args,
        "demo",
        depths=DEMO_DEPTHS,
        epochs=DEMO_EPOCHS,
        workers=args.workers,
        dataset="mnist1d",
        root=None,
        diagnostics=not args.no_diagnostics,
    )


def _cmd_degradation(args: argparse.Namespace) -> int:
    return _degradation(
        args,
        "degradation",
        depths=args.depths,
        workers=args.workers,
        dataset=args.dataset,
        root=args.data_dir,
        diagnostics=args.diagnostics,
        **recipe_options(args),
    )


def _degradation(
    args: argparse.Namespace,
    command: str,
    *,
    depths: Sequence[int],
    epochs: int,
    workers: int | None,
    dataset: str,
    root: str | None,
    diagnostics: bool = False,
    quick: bool = False,
    **kw: Any,
) -> int:
    from skipkit._runs import open_run
    from skipkit.data import get_dataset
    from skipkit.experiments import check_depth, format_table, run_degradation
    from skipkit.experiments.degradation import DEGRADATION_FILES
    from skipkit.experiments.report import Report, write_degradation_report

    if not depths:
        raise ValueError("give at least one depth, e.g. --depths 20,56")
    for d in depths:
        check_depth(d)
        if d > MAX_DEPTH:
            raise ValueError(f"depth {d} is deeper than {MAX_DEPTH}, the deepest supported")
    out_folder(args)
    get_dataset(dataset, root=root)  # a missing data folder fails before anything is written
    t0 = time.perf_counter()
    out = claim_out(args, command)
    with open_run(
        out, "degradation", resume=args.resume, overwrite=args.overwrite, writes=DEGRADATION_FILES
    ) as run:
        run.expect(*DEGRADATION_FILES)
        say(args, f"training {2 * len(depths)} networks ({epochs} epochs each) -> {out}")
        result = run_degradation(
            depths,
            dataset=dataset,
            root=root,
            epochs=epochs,
            out_dir=run,
            workers=workers,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet and sys.stderr.isatty(),
            **kw,
        )
        extend = None
        sections = _diagnostics_sections() if diagnostics else None
        if sections is not None:
            say(args, "measuring gradient flow, shattered gradients, loss landscapes and lesions")

            def extend(report: Report) -> None:
                found = sections(
                    out, depths=result.depths, dataset=dataset, seed=kw.get("seed", 0), quick=quick
                )
                for s in found:  # before the settings, which stay last
                    report.add_section(
                        s.title, s.html, s.images, index=len(report.sections) - 1, data=s.data
                    )

        before = {p.name for p in out.iterdir()}
        report = write_degradation_report(result, out, extend=extend)
        # the report's files (and any a report section adds) belong to this run
        made = {p.name for p in out.iterdir() if p.is_file()} - before
        run.expect(*sorted(made))
        run.record(*DEGRADATION_FILES, *sorted(made))
    echo(format_table(result))
    if len(result.depths) > 1:
        v = result.verdict()
        shown = v["plain_degrades"] and v["residual_holds"]
        echo(
            "degradation shown: deeper plain net trains worse, residual twin does not"
            if shown
            else "degradation not shown in this run (see the report)"
        )
    echo(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return 0


def _diagnostics_sections() -> Callable[..., Any] | None:
    """``skipkit.diagnostics.sections.report_sections`` when that module is installed."""
    try:
        from skipkit.diagnostics.sections import report_sections
    except ModuleNotFoundError as exc:
        if exc.name is not None and "skipkit.diagnostics.sections".startswith(exc.name):
            return None
        raise
    return report_sections


def _cmd_models(args: argparse.Namespace) -> int:
    import skipkit.models as models

    names = models.list_models(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    echo("\n".join(names))
    return 0


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
    handler: Handler = args.func
    try:
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
