"""The result of a loss-landscape scan: :class:`Landscape` and its ``.npz`` file format.

Separate from :mod:`skipkit.diagnostics.landscape` (which computes landscapes) because the
result is also read on its own: plots, the report sections and ``Landscape.load`` of a saved
file need the data class, not the scan.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skipkit._io import atomic_write_bytes
from skipkit.diagnostics.plot import plot_landscape

__all__ = ["Landscape"]

_FORMAT = "skipkit-landscape/1"


@dataclass
class Landscape:
    """Loss (and accuracy) on a 1-D or 2-D grid of weight-space offsets.

    Attributes:
        coords: one array of offsets per axis, ``(steps,)`` each.
        loss: ``(steps,)`` or ``(steps_x, steps_y)``; ``loss[i, j]`` is at
            ``(coords[0][i], coords[1][j])``. Mean loss over the data.
        accuracy: same shape; fraction correct (``NaN`` when the outputs are not class
            logits ``(N, K)`` with integer targets ``(N,)``).
        kind: ``"random"`` (Li et al. directions), ``"interpolation"`` or ``"directions"``
            (given by the caller).
        name: a label for plots.
        meta: what produced it: seed, include_bn, number of examples, direction norms,
            processes, seconds.
    """

    coords: list[np.ndarray]
    loss: np.ndarray
    accuracy: np.ndarray
    kind: str = "random"
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        """1 or 2."""
        return len(self.coords)

    def at_origin(self) -> float:
        """The loss at the grid point nearest offset 0 (the trained weights, for ``random``)."""
        idx = tuple(int(np.argmin(np.abs(c))) for c in self.coords)
        return float(self.loss[idx])

    def summary(self) -> dict[str, float]:
        """A few numbers to compare landscapes: the loss at the origin, the smallest and largest
        loss on the grid, and (2-D) ``nonconvex``: the share of interior points where the
        discrete Hessian of the loss has a negative eigenvalue (Li et al. map ``|λmin/λmax|``;
        this is its cheap cousin: 0 for a convex bowl, large for a chaotic surface)."""
        finite = self.loss[np.isfinite(self.loss)]
        out = {
            "origin_loss": self.at_origin(),
            "min_loss": float(finite.min()) if finite.size else math.nan,
            "max_loss": float(finite.max()) if finite.size else math.nan,
        }
        if self.dims == 2 and min(self.loss.shape) >= 3:
            z, (x, y) = self.loss, self.coords
            hx, hy = float(x[1] - x[0]), float(y[1] - y[0])
            dxx = (z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]) / hx**2
            dyy = (z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]) / hy**2
            dxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * hx * hy)
            # the smaller eigenvalue of [[dxx, dxy], [dxy, dyy]]
            lam_min = (dxx + dyy) / 2 - np.sqrt(((dxx - dyy) / 2) ** 2 + dxy**2)
            ok = np.isfinite(lam_min)
            out["nonconvex"] = float((lam_min[ok] < 0).mean()) if ok.any() else math.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: coords, loss and accuracy as nested lists (``None`` for non-finite)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "dims": self.dims,
            "coords": [c.tolist() for c in self.coords],
            "loss": _json_array(self.loss),
            "accuracy": _json_array(self.accuracy),
            "summary": {k: (v if math.isfinite(v) else None) for k, v in self.summary().items()},
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.npz`` (no pickles; ``meta`` as JSON text). Returns the path."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "kind": np.array(self.kind),
            "name": np.array(self.name),
            "meta": np.array(json.dumps(self.meta)),
        }
        for i, c in enumerate(self.coords):
            arrays[f"coord{i}"] = c
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        path = Path(path)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Landscape:
        """Read a file written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z or str(z["format"]) != _FORMAT:
                    raise ValueError(f"{str(path)!r} is not a skipkit landscape file")
                coords = [z[f"coord{i}"] for i in range(2) if f"coord{i}" in z]
                return cls(
                    coords=coords,
                    loss=z["loss"],
                    accuracy=z["accuracy"],
                    kind=str(z["kind"]),
                    name=str(z["name"]),
                    meta=json.loads(str(z["meta"])),
                )
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read landscape {str(path)!r}: {e}") from e

    def plot(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        """Contours, a 3-D surface and 1-D slices (2-D grids) or the curve (1-D);
        see :func:`skipkit.diagnostics.plot.plot_landscape`."""
        plot_landscape(self, path, **kwargs)


def _json_array(a: np.ndarray) -> list[Any]:
    out = np.where(np.isfinite(a), a, np.nan).astype(object)
    out[~np.isfinite(a)] = None
    result: list[Any] = out.tolist()
    return result
