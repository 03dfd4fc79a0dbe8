"""Argument kinds and help layout of the ``skipkit`` command (no torch import: ``--help`` is
fast).

Every number is checked when it is parsed (finite, in range), so a bad value is one
``skipkit: error: argument --lr: ...`` line and exit status 2 before anything runs.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from skipkit._lazy import load

__all__ = [
    "Formatter",
    "Parser",
    "add_data",
    "add_device_arg",
    "add_model_arg",
    "add_out",
    "add_parser",
    "add_recipe",
    "device",
    "echo",
    "int_list",
    "integer",
    "key_value",
    "positive_int",
    "real",
    "say",
]

DATASET_NAMES = ("mnist1d", "cifar10", "cifar100", "synthetic")
"""The names of :data:`skipkit.data.DATASETS`, here so that help needs no torch."""

# the demo's settings: its parser's help shows them and its handler uses them
DEMO_DEPTHS = (20, 56)
DEMO_EPOCHS = 20
QUICK_DEPTHS = (8, 14)
QUICK_EPOCHS = 2
MAX_DEPTH = 1202  # He et al.'s deepest CIFAR net; deeper ones do not fit a laptop's memory


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``skipkit: error: <what> (see 'skipkit X --help')``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"skipkit: error: {message} (see '{self.prog} --help')\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default the same way, ``(default: X)``, unless its help already
    says it; keeps the example epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is argparse.SUPPRESS:
            return text
        if action.required or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return text
        return f"{text} (default: {_show(action.default)})".strip()


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if value is False:
        return "off"
    if value is True:
        return "on"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) if value else "none"
    return str(value).replace("%", "%%")


def example(*lines: str) -> str:
    """An ``examples:`` epilog for a subcommand's help."""
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


# ------------------------------------------------------------------------------ value kinds


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected a number <= {high}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


positive_int = integer(1)
"""argparse type: a whole number >= 1 (shared with the diagnostics subcommands)."""


def real(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite float in the interval from ``low`` to ``high``."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    span = f"{lo}{low:g}, {high:g}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = math.isfinite(value)
        inside = inside and (value > low if low_open else value >= low)
        inside = inside and (value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated whole numbers, e.g. ``20,56``."""
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 20,56; got {text!r}"
        ) from None


def key_value(text: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE`` with a Python literal (or a bare word) as the value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. shortcut=B), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = raw  # a bare word is a string
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{key}: expected a finite number, got {raw!r}")
    return key, value


def add_device_arg(group: Any) -> None:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked by :func:`device`."""
    group.add_argument(
        "--device",
        type=device,
        default=None,
        help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)",
    )


def add_model_arg(group: Any) -> None:
    """``--model-arg KEY=VALUE`` (repeatable): extra keywords for the registry builder."""
    group.add_argument(
        "--model-arg",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the model builder (repeatable), e.g. shortcut=B",
    )


_DEVICE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def device(text: str) -> str:
    """argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, available on this machine."""
    m = _DEVICE.match(text.strip().lower())
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; use cpu, cuda, cuda:N (a GPU index) or mps"
        )
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return "cpu"
    torch = load("torch")  # only when a GPU device is asked for (see skipkit._lazy)

    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text!r} needs a CUDA GPU, and torch sees none here; use --device cpu"
            )
        if index is not None and int(index) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: there are {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r} needs Apple's MPS backend, which is not available; use --device cpu"
        )
    return f"{kind}:{index}" if index is not None else kind


# ------------------------------------------------------------------------- shared options

RESUME_HELP = (
    "continue the run in --out from its newest checkpoint that verifies; the config, model and "
    "data must be those of the run (each difference is listed), only --epochs may change, to "
    "extend the run"
)


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
    add_device_arg(g)


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


def add_parser(sub: Any, name: str, *, examples: Sequence[str], **kw: Any) -> Any:
    """A subcommand parser with the shared error style, help layout and an example epilog."""
    if "description" in kw:  # the raw layout keeps the epilog's lines; wrap the prose here
        kw["description"] = textwrap.fill(kw["description"], 88)
    return sub.add_parser(
        name, formatter_class=Formatter, epilog=example(*examples), prog=f"skipkit {name}", **kw
    )


# ------------------------------------------------------------------------------------ output


def say(args: argparse.Namespace, text: str) -> None:
    """A progress message on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        echo(text, err=True)


def echo(text: str, *, err: bool = False) -> None:
    """The command's output: results on stdout, messages on stderr."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()
