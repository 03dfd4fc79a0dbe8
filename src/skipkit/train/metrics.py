"""How a training run's per-epoch rows are written: ``metrics.csv``, ``metrics.json`` and the
log line. An empty CSV cell (JSON ``null``) means "not measured"; a non-finite value is written
as ``nan``/``inf``, never as an empty cell."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["csv_value", "format_row", "from_json", "json_row"]


def json_row(row: dict[str, float], unmeasured: set[str]) -> dict[str, Any]:
    """A JSON-ready row; the keys in ``unmeasured`` become ``null``."""
    # JSON has no NaN: null is "not measured", a non-finite value is the string "nan"/"inf"
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "epoch":
            out[k] = int(v)
        elif k in unmeasured:
            out[k] = None
        else:
            out[k] = v if math.isfinite(v) else str(v)
    return out


def from_json(v: float | str | None) -> float:
    """Inverse of :func:`json_row` for one value."""
    return math.nan if v is None else float(v)


def csv_value(key: str, v: float, unmeasured: bool) -> str:
    """One CSV cell."""
    if key == "epoch":
        return str(int(v))
    return "" if unmeasured else repr(float(v))


def format_row(row: dict[str, float], epochs: int) -> str:
    """The per-epoch log line."""
    text = (
        f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} "
        f"err {100 * row['train_error']:.2f}%"
    )
    if not math.isnan(row["test_error"]):
        text += f"  test loss {row['test_loss']:.4f} err {100 * row['test_error']:.2f}%"
    return text + f"  lr {row['lr']:.3g}  {row['time']:.1f}s"
