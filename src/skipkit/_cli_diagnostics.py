"""Parsers of ``skipkit gradflow``, ``skipkit landscape`` and ``skipkit advise``.

They live outside :mod:`skipkit.diagnostics` (whose package imports torch) so that ``skipkit
--help`` stays torch-free; the handlers are in :mod:`skipkit.diagnostics.cli`, imported when
a command runs (see :data:`skipkit.cli.HANDLERS`).
"""

from __future__ import annotations

import argparse
from typing import Any

from skipkit._cliargs import (
    DATASET_NAMES,
    add_device_arg,
    add_model_arg,
    add_out,
    add_parser,
    integer,
    positive_int,
    real,
)

__all__ = ["VARIANTS", "add_parsers"]

VARIANTS = {"both": (False, True), "skip": (True,), "no-skip": (False,), "plain": (False,)}
"""``--variants``: ``no-skip`` is the plain twin (``skip=False``, as ``--no-skip`` elsewhere);
``plain`` is kept as an alias."""


def _add_model(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    g = p.add_argument_group("model")
    if several:
        g.add_argument(
            "--model",
            action="append",
            default=None,
            help="registry name (repeatable; default: resnet20 and resnet56)",
        )
        g.add_argument(
            "--variants",
            choices=tuple(VARIANTS),
            default="both",
            help="build each model with skips, as its plain twin (no-skip; alias plain), or both",
        )
    else:
        g.add_argument("--model", required=True, help="registry name, e.g. resnet20")
        g.add_argument("--no-skip", action="store_true", help="the plain twin (skip=False)")
    add_model_arg(g)
    g.add_argument(
        "--weights",
        default=None,
        help="a .safetensors or torch state_dict file or URL to load (e.g. from 'skipkit "
        "train') (default: none, the seeded random initialisation)",
    )


def _add_data(p: argparse.ArgumentParser, *, examples: int, what: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist1d", help=f"one of {', '.join(DATASET_NAMES)}")
    g.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR folder / MNIST-1D cache folder (default: $SKIPKIT_CACHE or ~/.cache/skipkit)",
    )
    g.add_argument(
        "--examples",
        type=integer(1, 10_000_000),
        default=examples,
        help=f"{what}, drawn from the training set with --seed",
    )
    g.add_argument("--seed", type=integer(0, 2**32 - 1), default=0, help="init and data draw")
    add_device_arg(g)


def add_parsers(sub: Any) -> None:
    """Register ``gradflow``, ``landscape`` and ``advise`` on ``skipkit``'s subparsers."""
    p = add_parser(
        sub,
        "gradflow",
        examples=(
            "skipkit gradflow --model resnet20 --model resnet56",
            "skipkit gradflow --model resnet56 --variants no-skip --weights w.safetensors",
        ),
        help="gradient norms per layer and skip balance, plain vs residual",
        description="One forward and backward pass per model on a batch of training data: "
        "the gradient norm of every layer's output and weights against depth (log scale, "
        "models overlaid), He et al.'s per-layer response std, and per skip the ratio of "
        "branch to shortcut. Writes gradflow.json and gradflow.png to --out.",
    )
    _add_model(p, several=True)
    _add_data(p, examples=128, what="batch size of the measured pass")
    p.add_argument("--ranks", action="store_true", help="also effective ranks (an SVD/layer)")
    add_out(p, "gradflow", resume=None)

    p = add_parser(
        sub,
        "landscape",
        examples=(
            "skipkit landscape --model resnet20 --weights runs/r20/model.safetensors",
            "skipkit landscape --model resnet20 --steps 41 --out runs/land --resume",
        ),
        help="Li et al.'s loss landscape (random directions or interpolation)",
        description="The loss on a grid around the weights along filter-normalized random "
        "directions (Li et al. 2018), or along the line between two weight files "
        "(--interpolate). Resumable (--resume) and splittable: 'torchrun --nproc-per-node N "
        "-m skipkit.cli landscape ...' deals the grid points to N processes. Writes "
        "landscape.npz, landscape.json and landscape.png to --out.",
    )
    _add_model(p)
    _add_data(p, examples=1000, what="training examples the loss is averaged over")
    g = p.add_argument_group("grid")
    g.add_argument("--dims", type=int, choices=(1, 2), default=2, help="1 or 2 directions")
    g.add_argument(
        "--steps",
        type=positive_int,
        default=21,
        help="points per axis (a grid that cannot fit in memory is refused)",
    )
    g.add_argument(
        "--span",
        type=real(-1000, 1000),
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="offsets per axis (default: -1 1; -0.5 1.5 with --interpolate)",
    )
    g.add_argument("--include-bn", action="store_true", help="move biases and BN weights too")
    g.add_argument(
        "--interpolate",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="two weight files of the model: the 1-D line from A to B instead",
    )
    g.add_argument(
        "--batch-size", type=integer(1, 65_536), default=500, help="examples per forward"
    )
    p.add_argument(
        "--train-epochs",
        type=integer(0, 10_000),
        default=0,
        help="train the model this many epochs first (skipkit's default recipe), when no "
        "--weights are given",
    )
    add_out(p, "landscape", resume="continue an interrupted grid in --out (same settings)")

    p = add_parser(
        sub,
        "advise",
        examples=(
            "skipkit advise --model resnet56 --no-skip",
            "skipkit advise --model resnet56 --no-skip --validate-epochs 3",
        ),
        help="where skip connections belong in a model",
        description="Measures gradient flow and activation ranks on a batch and proposes "
        "skips (src, dst, merge, shortcut, reason) for skipkit.add_skip. With "
        "--validate-epochs it also trains the model with and without the advice. Writes "
        "advice.json and gradflow.png to --out.",
    )
    _add_model(p)
    _add_data(p, examples=128, what="batch size of the measured pass")
    p.add_argument("--block", type=integer(1, 1000), default=2, help="layers per skip")
    p.add_argument(
        "--min-decades",
        type=real(0, 100, low_open=True),
        default=1.5,
        help="gradient-signal change that marks a span unhealthy",
    )
    p.add_argument(
        "--max",
        type=integer(1, 10_000),
        default=None,
        help="keep the N best suggestions (default: all)",
    )
    p.add_argument(
        "--validate-epochs",
        type=integer(0, 10_000),
        default=0,
        help="train the model as it is and with the advice applied for N epochs on "
        "--validate-examples training examples, and compare training errors (0: skip)",
    )
    p.add_argument(
        "--validate-examples", type=integer(1, 10_000_000), default=512, help="for validation"
    )
    add_out(p, "advise", resume=None)
