"""Handler of ``skipkit models`` (its parser is in :mod:`skipkit.cli`)."""

from __future__ import annotations

import argparse

from skipkit._cliargs import echo
from skipkit.models._registry import list_models

__all__ = ["cmd_models"]


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    echo("\n".join(names))
    return 0
