"""The ``skipkit`` command line.

::

    skipkit demo [--quick]              plain vs residual on MNIST-1D -> runs/demo/report.html
    skipkit degradation --depths 20,56  the same experiment with every knob
    skipkit train --model resnet20      train one registered model, with checkpoints
    skipkit models [PATTERN]            list the model registry

Other modules add subcommands: each module named in :data:`EXTENSIONS` that exists exposes
``add_parsers(subparsers)`` and gives every parser it adds ``set_defaults(func=handler)``, where
``handler(args) -> int`` returns the exit status. A user mistake (``ValueError``,
``TypeError``, ``FileNotFoundError``) becomes one ``skipkit: error: ...`` line and status 2;
``--traceback`` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["EXTENSIONS", "build_parser", "echo", "key_value", "main", "positive_int", "say"]

EXTENSIONS = ("skipkit.diagnostics.cli", "skipkit.experiments.transformer")
"""Modules whose ``add_parsers(subparsers)`` adds subcommands (skipped when absent)."""

DEMO_DEPTHS = (20, 56)
DEMO_EPOCHS = 20
QUICK_DEPTHS = (8, 14)
QUICK_EPOCHS = 2

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``skipkit: error: <what> (see 'skipkit X --help')``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"skipkit: error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------------ value parsers


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 20,56; got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (shared with the subcommands of :data:`EXTENSIONS`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE`` with a Python literal (or a bare word) as the value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. shortcut=B), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word is a string
    return key, value


# ------------------------------------------------------------------------------------ parsers


def _add_recipe(p: argparse.ArgumentParser, *, epochs: int) -> None:
    g = p.add_argument_group("training recipe (defaults: He et al.'s CIFAR ResNet recipe)")
    g.add_argument("--epochs", type=positive_int, default=epochs, help="default: %(default)s")
    g.add_argument("--batch-size", type=positive_int, default=128, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate (%(default)s)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (%(default)s)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="default: %(default)s")
    g.add_argument(
        "--schedule",
        choices=("onecycle", "cosine", "step", "none"),
        default="onecycle",
        help="learning-rate schedule (%(default)s)",
    )
    g.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if any)")


def _add_data(p: argparse.ArgumentParser) -> None:
    from skipkit.data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", default="mnist1d", help=f"one of {', '.join(DATASETS)} (%(default)s)"
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR: folder holding cifar-10-batches-py/ or cifar-100-python/; "
        "MNIST-1D: cache folder (default $SKIPKIT_CACHE or ~/.cache/skipkit)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with the subcommands of :data:`EXTENSIONS` that are installed."""
    parser = _Parser(
        prog="skipkit",
        description="Skip connections for PyTorch: experiments, training and diagnostics.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (_demo_parser, _degradation_parser, _train_parser, _models_parser):
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


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the degradation problem in minutes: plain vs residual nets on MNIST-1D",
        description="Train 20- and 56-layer plain networks and their residual twins on "
        "MNIST-1D and write a self-contained HTML report (with plots, a table and an "
        "explanation) to --out.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (%(default)s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a seconds-long smoke run (depths {QUICK_DEPTHS}, {QUICK_EPOCHS} epochs)",
    )
    p.add_argument("--workers", type=positive_int, default=None, help="parallel processes")
    p.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="leave the gradient-flow and loss-landscape sections out of the report",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_demo)


def _degradation_parser(sub: Any) -> None:
    p = sub.add_parser(
        "degradation",
        help="train plain and residual twins at several depths, write a report",
        description="The degradation experiment (He et al. 2015, figures 1 and 6) with every "
        "setting exposed. Writes report.html, PNG plots, results.json and one folder per "
        "run (metrics, checkpoints) to --out.",
    )
    p.add_argument(
        "--depths",
        type=_int_list,
        default=list(DEMO_DEPTHS),
        help="comma-separated depths, each 6n+2 (default: 20,56)",
    )
    _add_data(p)
    _add_recipe(p, epochs=30)
    p.add_argument("--out", default="runs/degradation", help="output folder (%(default)s)")
    p.add_argument("--workers", type=positive_int, default=None, help="parallel processes")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs")
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="add gradient-flow and loss-landscape sections to the report",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_degradation)


def _train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train one registered model (checkpoints every epoch, --resume)",
        description="Train a model from the registry (see 'skipkit models') on a dataset. "
        "Writes metrics.csv/json, checkpoints and model.safetensors to --out. Under "
        "'torchrun --nproc-per-node N skipkit train ...' it trains with DDP.",
    )
    p.add_argument("--model", required=True, help="registry name, e.g. resnet20 or resnet56")
    p.add_argument("--no-skip", action="store_true", help="build the plain twin (skip=False)")
    p.add_argument(
        "--model-arg",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the model builder (repeatable), e.g. shortcut=B",
    )
    _add_data(p)
    p.add_argument("--augment", action="store_true", help="CIFAR: pad-4 crop + flip")
    p.add_argument("--download", action="store_true", help="CIFAR: fetch with torchvision")
    _add_recipe(p, epochs=30)
    g = p.add_argument_group("more training options")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    g.add_argument("--milestones", type=_int_list, default=None, help="epochs for --schedule step")
    g.add_argument("--gamma", type=float, default=0.1, help="step decay factor (%(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=None, help="max global gradient norm")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--out", default="runs/train", help="output folder (%(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=_cmd_train)


def _models_parser(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models",
        description="List the names accepted by --model and skipkit.models.create.",
    )
    p.add_argument("pattern", nargs="?", default=None, help="shell pattern, e.g. 'resnet*'")
    p.set_defaults(func=_cmd_models)


# ----------------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.quick:  # in this process: starting worker interpreters would dominate
        return _degradation(
            args,
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
        depths=DEMO_DEPTHS,
        epochs=DEMO_EPOCHS,
        workers=args.workers,
        dataset="mnist1d",
        root=None,
        diagnostics=not args.no_diagnostics,
    )


def _cmd_degradation(args: argparse.Namespace) -> int:
    extra = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "seed": args.seed,
        "device": args.device,
        "resume": args.resume,
    }
    return _degradation(
        args,
        depths=args.depths,
        epochs=args.epochs,
        workers=args.workers,
        dataset=args.dataset,
        root=args.data_dir,
        diagnostics=args.diagnostics,
        **extra,
    )


def _degradation(
    args: argparse.Namespace,
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
    from skipkit.experiments import check_depth, format_table, run_degradation
    from skipkit.experiments.report import Report, write_degradation_report

    if not depths:
        raise ValueError("give at least one depth, e.g. --depths 20,56")
    for d in depths:
        check_depth(d)
    t0 = time.perf_counter()
    out = Path(args.out)
    say(args, f"training {2 * len(depths)} networks ({epochs} epochs each) -> {out}")
    result = run_degradation(
        depths,
        dataset=dataset,
        root=root,
        epochs=epochs,
        out_dir=out,
        workers=workers,
        progress=not args.quiet and sys.stderr.isatty(),
        **kw,
    )
    extend = None
    sections = _diagnostics_sections() if diagnostics else None
    if sections is not None:
        say(args, "measuring gradient flow and loss landscapes")

        def extend(report: Report) -> None:
            found = sections(
                out, depths=result.depths, dataset=dataset, seed=kw.get("seed", 0), quick=quick
            )
            for s in found:  # before the settings, which stay last
                report.add_section(s.title, s.html, s.images, index=len(report.sections) - 1)

    report = write_degradation_report(result, out, extend=extend)
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


def _cmd_train(args: argparse.Namespace) -> int:
    import skipkit.models as models
    from skipkit.data import DATASETS, get_dataset
    from skipkit.train import TrainConfig, Trainer, seed_everything, teardown

    key = args.dataset.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[key]
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        milestones=tuple(args.milestones) if args.milestones else None,
        gamma=args.gamma,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        grad_clip=args.grad_clip,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        seed=args.seed,
        num_workers=args.num_workers,
        device=args.device,
        out_dir=args.out,
        resume=args.resume,
        quiet=args.quiet,
    )
    # build the model before loading data, so a bad model option fails at once
    seed_everything(cfg.seed)
    model_kw: dict[str, Any] = {
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "dims": spec.dims,
        "skip": not args.no_skip,
    }
    model_kw.update(dict(args.model_arg))
    if not models.is_registered(args.model):
        models.create(args.model)  # raises the ValueError with close matches
    try:
        model = models.create(args.model, **model_kw)
    except TypeError as exc:
        raise ValueError(f"cannot build {args.model} for {args.dataset}: {exc}") from exc
    data_kw: dict[str, Any] = {}
    if key in ("cifar10", "cifar100"):
        data_kw = {"augment": args.augment, "download": args.download}
    train, test = get_dataset(key, root=args.data_dir, **data_kw)
    trainer = Trainer(model, train, test, cfg)
    hist = trainer.fit()
    teardown()
    if trainer.dist.is_main:
        last = hist[-1]
        echo(
            f"{args.model}{' (plain)' if args.no_skip else ''}: train error "
            f"{100 * last['train_error']:.2f}%, test error {100 * last['test_error']:.2f}% "
            f"after {int(last['epoch'])} epochs; weights: {Path(args.out) / 'model.safetensors'}"
        )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import skipkit.models as models

    names = models.list_models(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    echo("\n".join(names))
    return 0


def say(args: argparse.Namespace, text: str) -> None:
    """A progress message on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        echo(text, err=True)


def echo(text: str, *, err: bool = False) -> None:
    """The command's output: results on stdout, messages on stderr."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


# --------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skipkit`` command; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by _Parser
        return exc.code if isinstance(exc.code, int) else 0
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.func
    try:
        return int(handler(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if args.traceback:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        echo(f"skipkit: error: {message}", err=True)
        return 2
    except KeyboardInterrupt:
        echo("skipkit: interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
