"""Errors users see: pure Python (no torch import), so the Keras front can raise them on any
backend.

- :class:`ShapeMismatchError`: a skip connection cannot join its two signals.
- :class:`CheckpointError`: a checkpoint or weights file is missing, broken or foreign.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["CheckpointError", "ShapeMismatchError", "fmt_shape"]


def fmt_shape(shape: Sequence[int | None] | None) -> str:
    """``(2, 3, 4)`` → ``"(2, 3, 4)"``; unknown dims (Keras' ``None``) print as ``None``;
    an unknown shape prints as ``"?"``."""
    if shape is None:
        return "?"
    return "(" + ", ".join("None" if s is None else str(int(s)) for s in shape) + ")"


class ShapeMismatchError(ValueError):
    """Raised when a skip connection cannot join its two signals.

    The message names the module path, both shapes and what would fix it; the same facts are
    kept as attributes for programs.

    Attributes:
        path: dotted path of the skip module in its model (``"<root>"`` when unknown).
        skip_shape: shape of the skipped signal (after the tap), or ``None``.
        branch_shape: shape of the main path (the body's output), or ``None``.
        fixes: human-readable options that would make the shapes fit.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        skip_shape: Sequence[int | None] | None = None,
        branch_shape: Sequence[int | None] | None = None,
        fixes: Iterable[str] = (),
    ) -> None:
        self.path = path or "<root>"
        self.skip_shape: tuple[int | None, ...] | None = (
            tuple(skip_shape) if skip_shape is not None else None
        )
        self.branch_shape: tuple[int | None, ...] | None = (
            tuple(branch_shape) if branch_shape is not None else None
        )
        self.fixes = list(fixes)
        text = f"{self.path}: {message}"
        if self.skip_shape is not None or self.branch_shape is not None:
            text += f" (skip {fmt_shape(self.skip_shape)}, branch {fmt_shape(self.branch_shape)})"
        if self.fixes:
            text += ". Fix: " + "; or ".join(self.fixes)
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default exception pickling.
        return (
            _rebuild_error,
            (self.args[0], self.path, self.skip_shape, self.branch_shape, self.fixes),
        )


def _rebuild_error(
    text: str,
    path: str,
    skip_shape: tuple[int | None, ...] | None,
    branch_shape: tuple[int | None, ...] | None,
    fixes: list[str],
) -> ShapeMismatchError:
    err = ShapeMismatchError.__new__(ShapeMismatchError)
    ValueError.__init__(err, text)
    err.path, err.skip_shape, err.branch_shape, err.fixes = path, skip_shape, branch_shape, fixes
    return err


class CheckpointError(ValueError):
    """Raised when a checkpoint or weights file cannot be used: missing, not a regular file,
    truncated, corrupt or foreign. The message names the file and what is wrong.

    Attributes:
        path: the file (as given), or ``None``.
    """

    def __init__(self, message: str, *, path: object = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(message if path is None else f"{path}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_checkpoint_error, (self.args[0], self.path))


def _rebuild_checkpoint_error(text: str, path: str | None) -> CheckpointError:
    err = CheckpointError.__new__(CheckpointError)
    ValueError.__init__(err, text)
    err.path = path
    return err
