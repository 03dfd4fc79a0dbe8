"""What a :class:`~skipkit.train.Trainer` writes in its run folder besides the checkpoint
(``metrics.csv`` and ``metrics.json``), and the check that a checkpoint may be resumed.

Separate from the loop (:mod:`skipkit.train.trainer`): these read and write the run's
files from the history and the config alone, not the model.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skipkit._runs import RunFolder
from skipkit.errors import CheckpointError
from skipkit.train.config import TrainConfig
from skipkit.train.identity import resume_differences
from skipkit.train.metrics import csv_value, json_row

METRIC_FIELDS = ("epoch", "train_loss", "train_error", "test_loss", "test_error", "lr", "time")
"""Columns of ``metrics.csv``; errors are fractions in [0, 1], ``time`` is seconds per epoch."""


def write_metrics(
    run: RunFolder, config: TrainConfig, history: Sequence[dict[str, float]], *, has_test: bool
) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.json`` in ``run`` from the whole ``history``."""
    # an empty cell (JSON null) means "not measured" (no test set); NaN is written as nan
    unmeasured = {"test_loss", "test_error"} if not has_test else set()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: csv_value(k, row[k], k in unmeasured) for k in METRIC_FIELDS})
    run.write_text("metrics.csv", buf.getvalue(), save=False)
    doc = {
        "config": config.to_dict(),
        "epochs": [json_row(r, unmeasured) for r in history],
    }
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    run.write_text("metrics.json", text)


def check_resumable(
    path: Path, epoch: int, state: dict[str, Any], config: TrainConfig, identity: dict[str, Any]
) -> None:
    """Raise :class:`~skipkit.errors.CheckpointError` when the checkpoint at ``path`` (of
    ``epoch``, with ``state``) records another config or identity than this run, or is past
    ``config.epochs``."""
    diffs = resume_differences(state, config.to_dict(), identity)
    if diffs:
        raise CheckpointError(
            f"cannot resume: this run differs from the checkpoint in {', '.join(diffs)}; "
            "only --epochs may change (to extend the run). Start a new run with a new "
            "--out, or replace this one with --overwrite",
            path=path,
        )
    if epoch > config.epochs:
        raise CheckpointError(
            f"cannot resume: the checkpoint is at epoch {epoch}, beyond epochs="
            f"{config.epochs}; --epochs may only extend a run",
            path=path,
        )
