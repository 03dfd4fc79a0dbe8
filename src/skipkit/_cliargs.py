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
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = [
    "Formatter",
    "Parser",
    "add_model_arg",
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
    import torch  # only when a GPU device is asked for

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
