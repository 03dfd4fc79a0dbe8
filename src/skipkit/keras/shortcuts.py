"""Shortcut planning: the layer that makes the skipped input fit the branch's output.

```
  (N, F)          -> (N, F')            Dense(F')                       feature vectors
  (N, T, F)       -> (N, T, F')         Dense(F')                       sequences (T kept)
  (N, H, W, C)    -> (N, H/s, W/s, C')  Conv2D(C', 1, strides=s)        conv maps, 1D/2D/3D
```

Strides are found per spatial dim so that ``ceil(in / s) == out``, which is what a padded
strided convolution or pooling produces, odd sizes included (``7 -> 4`` is stride 2).
"""

from __future__ import annotations

from typing import Any

import keras

from skipkit._plan import analyse_shapes
from skipkit.keras._shapes import Shape, channel_axis, fmt, mismatch

_CONV = {3: keras.layers.Conv1D, 4: keras.layers.Conv2D, 5: keras.layers.Conv3D}


def _bad_dim_fixes(spatial: bool, out_shape: Shape) -> list[str]:
    keep = (
        "keep the size in the body (padding='same', or strides that divide it)"
        if spatial
        else "keep the sequence length in the body (return_sequences=True, padding='same')"
    )
    return [keep, f"pass shortcut=<a Keras layer> that maps the input to {fmt(out_shape)}"]


def plan_shortcut(
    in_shape: Shape,
    out_shape: Shape,
    *,
    data_format: str = "channels_last",
    spatial: bool = False,
    keep_channels: bool = False,
    force: bool = False,
    probe: tuple[Shape, Shape] | None = None,
    path: str = "<root>",
    **layer_kwargs: Any,
) -> keras.layers.Layer | None:
    """The layer mapping a skip of ``in_shape`` onto ``out_shape``, or ``None`` for identity.

    Args:
        in_shape: the block input, ``(N, …, C)`` (or ``(N, C, …)`` channels first).
        out_shape: the branch output it must match, same rank.
        data_format: where the channels are for rank >= 3 maps.
        spatial: the non-channel dims are spatial (the body convolves or pools), so they may be
            downsampled by a strided 1x1 convolution. Otherwise they are sequence / token dims
            and must be equal.
        keep_channels: match only the non-channel dims (for a concatenation).
        force: return a projection even when the shapes already match.
        probe: the body's input and output shapes at a concrete size for the dims unknown on
            both sides (``None`` in ``in_shape`` and ``out_shape``), so that a body that
            downsamples variable-size maps still gets the right stride.
        path: name of the skip, for error messages.
        **layer_kwargs: passed to the ``Dense`` / ``ConvND`` (``name``, ``dtype``, …).

    Raises:
        ShapeMismatchError: the ranks differ, a dim grows, a sequence length changes, or no
            integer stride gives the branch's size.
    """
    rank = len(in_shape)
    if rank != len(out_shape):
        raise mismatch(
            path,
            f"the body changes the rank from {rank} to {len(out_shape)}",
            skip=in_shape,
            branch=out_shape,
            fixes=[
                "keep the rank inside the body (move Flatten / GlobalPooling / "
                "return_sequences=False after the skip)",
                f"pass shortcut=<a Keras layer> that maps the input to {fmt(out_shape)}",
            ],
        )
    axis = channel_axis(data_format, rank)
    channels = in_shape[axis] if keep_channels else out_shape[axis]
    # Dims unknown on both sides are compared at the probe's concrete size.
    unknown = [in_shape[d] is None and out_shape[d] is None for d in range(rank)]
    at = [probe[0][d] if u and probe else in_shape[d] for d, u in enumerate(unknown)]
    to = [probe[1][d] if u and probe else out_shape[d] for d, u in enumerate(unknown)]
    diff = analyse_shapes(at, to, channel_axis=axis)
    others = [d for d in range(1, rank) if d != axis]
    for d, fit in zip(others, diff.dims, strict=True):
        i, o = fit.size_in, fit.size_out
        probed = " at a probe size" if unknown[d] else ""
        if not spatial and fit.kind not in ("same", "unknown"):
            raise mismatch(
                path,
                f"the sequence length (dim {d}) changes from {i} to {o}{probed}",
                skip=in_shape,
                branch=out_shape,
                fixes=_bad_dim_fixes(spatial, out_shape),
            )
        if fit.kind in ("same", "stride"):
            continue
        if fit.kind == "unknown":
            why = f"dim {d} is known on one side only ({i} vs {o}), so no stride can be planned"
        elif fit.kind == "up":
            why = f"dim {d} grows from {i} to {o}{probed}; a 1x1 shortcut can only downsample"
        else:
            why = f"dim {d} goes from {i} to {o}{probed}; no stride s gives ceil({i}/s) == {o}"
        raise mismatch(
            path, why, skip=in_shape, branch=out_shape, fixes=_bad_dim_fixes(spatial, out_shape)
        )
    strides = list(diff.strides)
    if channels is None:
        raise mismatch(
            path,
            f"the channel dim ({axis}) is unknown",
            skip=in_shape,
            branch=out_shape,
            fixes=["give the input a static channel / feature size"],
        )
    downsample = any(s > 1 for s in strides)
    if not force and not downsample and in_shape[axis] == channels:
        return None
    if axis == rank - 1 and not (spatial and rank in _CONV):
        # Vectors and sequences: a Dense on the last axis is the 1x1 projection.
        return keras.layers.Dense(channels, **layer_kwargs)
    if rank not in _CONV:
        raise mismatch(
            path,
            f"no 1x1 convolution exists for rank-{rank} maps",
            skip=in_shape,
            branch=out_shape,
            fixes=[f"pass shortcut=<a Keras layer> that maps the input to {fmt(out_shape)}"],
        )
    return _CONV[rank](channels, 1, strides=tuple(strides), data_format=data_format, **layer_kwargs)
