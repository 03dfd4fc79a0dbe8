"""Shape helpers for the Keras layers: static shapes, data formats and clear mismatch errors.

Keras shapes are tuples whose entries may be ``None`` (the batch, a variable sequence length).
Two dims are *compatible* when they are equal or both unknown; a known dim never matches an
unknown one, because no shortcut can be planned for a size that is only known at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras

# Re-exported: the stride search lives in the shared, framework-free shape analysis.
from skipkit._plan import stride_for as stride_for
from skipkit.errors import ShapeMismatchError

Shape = tuple[int | None, ...]


def as_shape(shape: Any) -> Shape:
    """A Keras shape (tuple, list, ``TensorShape``) as a plain tuple of ``int | None``."""
    return tuple(None if d is None else int(d) for d in shape)


def fmt(shape: Sequence[int | None] | None) -> str:
    """``(None, 28, 28, 1)`` as text; ``None`` (not known) as ``"?"``."""
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def mismatch(
    path: str,
    message: str,
    *,
    skip: Sequence[int | None] | None,
    branch: Sequence[int | None] | None,
    fixes: Iterable[str] = (),
) -> ShapeMismatchError:
    """A :class:`skipkit.ShapeMismatchError` for Keras shapes, whose dims may be ``None``.

    The shapes are written into the message here (the core formatter expects ``int`` dims) and
    kept on the error as ``skip_shape`` / ``branch_shape`` for programs.
    """
    err = ShapeMismatchError(
        f"{message} (skip {fmt(skip)}, branch {fmt(branch)})", path=path, fixes=fixes
    )
    keep: Any = err  # the core declares int dims; Keras dims may be None
    keep.skip_shape = None if skip is None else tuple(skip)
    keep.branch_shape = None if branch is None else tuple(branch)
    return err


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """``layer`` and every layer nested in it (Sequential, Functional, subclassed)."""
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return [layer]
    return list(flatten(include_self=True, recursive=True))


def spatial_format(layer: keras.layers.Layer) -> str | None:
    """``data_format`` of the first convolution / pooling / resampling layer inside ``layer``.

    ``None`` when ``layer`` holds none: then it works on feature vectors or sequences.
    """
    for sub in sublayers(layer):
        fmt_ = getattr(sub, "data_format", None)
        if fmt_ in ("channels_last", "channels_first"):
            return str(fmt_)
    return None


def channel_axis(data_format: str, rank: int) -> int:
    """Non-negative index of the channel / feature axis for a tensor of rank ``rank``."""
    if data_format == "channels_first" and rank >= 3:
        return 1
    return rank - 1


def output_shape(layer: keras.layers.Layer, input_shape: Shape) -> Shape:
    """Build ``layer`` for ``input_shape`` if needed and return its output shape.

    Uses ``compute_output_shape`` where the layer defines it, otherwise a symbolic call (no
    real compute): this is Keras' own ``compute_output_spec``.
    """
    if not layer.built:
        layer.build(input_shape)
    spec = layer.compute_output_spec(keras.KerasTensor(input_shape))
    if not hasattr(spec, "shape"):
        raise TypeError(
            f"layer {layer.name!r} returns {type(spec).__name__}, not a single tensor; a skip "
            "connection needs one output (pick one inside the body)"
        )
    return as_shape(spec.shape)
