"""The resume file of a loss-landscape scan (one ``.npz``, per-rank files under torchrun).

Separate from the scan loop (:mod:`skipkit.diagnostics._landscape_scan`): this is the file
format and its merge rules, read and written at a few points of the loop.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np

from skipkit._io import atomic_write_bytes

# the records keep the name of the public module they always came from
log = logging.getLogger("skipkit.diagnostics.landscape")


class _Checkpoint:
    """The resume file: ``path`` holds merged results; under several processes each rank
    also writes ``<path>.rank<r>.npz`` with its own points until the run completes."""

    def __init__(self, path: str | os.PathLike[str], fingerprint: str, *, rank: int, world: int):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.rank, self.world = rank, world
        self.own = self.path if world == 1 else self._rank_file(rank)

    def _rank_file(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.name}.rank{rank}.npz")

    def _files(self) -> list[Path]:
        extra = sorted(self.path.parent.glob(f"{self.path.name}.rank*.npz"))
        return [p for p in [self.path, *extra] if p.exists()]

    def load_into(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        for f in self._files():
            try:
                with np.load(f, allow_pickle=False) as z:
                    fp = str(z["fingerprint"])
                    if fp != self.fingerprint:
                        raise ValueError(
                            f"checkpoint {str(f)!r} belongs to another landscape (other model "
                            "weights, directions, grid or data); delete it or choose another "
                            "checkpoint path"
                        )
                    d = z["done"]
                    if d.shape != done.shape:
                        raise ValueError(f"checkpoint {str(f)!r} has another grid size")
                    loss[d], acc[d] = z["loss"][d], z["accuracy"][d]
                    done |= d
            except (OSError, KeyError) as e:
                log.warning("ignoring unreadable landscape checkpoint %s (%s)", f, e)
        if done.any():
            log.info("resuming landscape: %d of %d points already done", done.sum(), done.size)

    def write(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            fingerprint=np.array(self.fingerprint),
            loss=loss,
            accuracy=acc,
            done=done,
        )
        atomic_write_bytes(self.own, buf.getvalue())

    def finish(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        """Rank 0 after the gather: one merged file, the per-rank files removed."""
        if self.world > 1:
            self.own = self.path
            self.write(loss, acc, done)
            for r in range(self.world):
                self._rank_file(r).unlink(missing_ok=True)
