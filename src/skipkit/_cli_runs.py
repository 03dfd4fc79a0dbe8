"""What the command handlers share: the ``--out`` checks and claim, and the recipe options.

Imported by the handlers (:data:`skipkit.cli.HANDLERS`) when a command runs, never by the
parsers, so ``--help`` does not load :mod:`skipkit._runs`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skipkit._runs import check_out_dir, new_run_dir

__all__ = ["claim_out", "out_folder", "recipe_options"]


def out_folder(args: argparse.Namespace) -> None:
    """Refuse an unusable ``--out`` and ``--resume`` without ``--out``, creating nothing."""
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out: the folder of the run to continue")
    if args.out is not None:
        check_out_dir(args.out)


def claim_out(args: argparse.Namespace, command: str) -> Path:
    """``--out``, or a new unused folder ``runs/<command>/<date-time>`` (created now)."""
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
