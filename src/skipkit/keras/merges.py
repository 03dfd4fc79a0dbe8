"""Merge layers: how the skip joins the main path. One protocol: ``merge([skip, branch])``.

``skip`` is the shortcut's output and ``branch`` the body's; both are ``(N, …, C)`` maps
(``(N, C, …)`` channels first). ``Residual(merge="add" | "concat" | "gate" | "rezero")`` is
shorthand for these layers; any Keras merge layer taking ``[skip, branch]`` works too
(``keras.layers.Multiply()``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from skipkit.keras._shapes import Shape, as_shape, channel_axis

_register = keras.saving.register_keras_serializable(package="skipkit")
_CONV = {3: keras.layers.Conv1D, 4: keras.layers.Conv2D, 5: keras.layers.Conv3D}


class _MaskedMerge(keras.layers.Layer):
    """A merge of ``[skip, branch]`` that keeps masks: a step is valid where both paths are
    (a path without a mask is valid everywhere)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        masks = [m for m in (mask or ()) if m is not None]
        if len(masks) < 2:
            return masks[0] if masks else None
        return ops.logical_and(masks[0], masks[1])


@_register
class Add(_MaskedMerge):
    """``y = skip + branch``; both ``(N, …)`` of one shape."""

    joins_channels = False

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        return ops.add(skip, branch)

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        return as_shape(input_shape[1])


@_register
class Concat(_MaskedMerge):
    """``y = concat([skip, branch], axis)``: ``(N, …, C) + (N, …, C') -> (N, …, C + C')``.

    Args:
        axis: the channel axis; ``-1`` (channels last) by default, ``1`` for channels first.
    """

    joins_channels = True

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs: list[Any]) -> Any:
        return ops.concatenate(list(inputs), axis=self.axis)

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        skip, branch = as_shape(input_shape[0]), as_shape(input_shape[1])
        axis = self.axis % len(skip)
        out = list(branch)
        c_skip, c_branch = skip[axis], branch[axis]
        out[axis] = None if c_skip is None or c_branch is None else c_skip + c_branch
        return tuple(out)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis}


@_register
class Gate(_MaskedMerge):
    """Highway gate: ``T = sigmoid(W s + b)``, ``y = T * branch + (1 - T) * skip``.

    ``W`` is a ``Dense`` on the channel axis (a 1x1 convolution for channels-first maps) from
    the skip ``s`` (the block input, or its projection) to one gate per output channel. The bias
    starts at ``bias`` (-2 by default, Srivastava et al. 2015), so ``T ≈ 0.12`` at init and the
    block begins close to carrying its input through.

    Shapes: ``[(N, …, C), (N, …, C)] -> (N, …, C)``.

    Args:
        bias: initial value of the gate's bias.
        data_format: ``"channels_last"`` or ``"channels_first"`` (for rank >= 3 maps).
    """

    joins_channels = False

    def __init__(
        self, bias: float = -2.0, data_format: str = "channels_last", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.bias = float(bias)
        self.data_format = data_format
        self.transform: keras.layers.Layer | None = None

    def build(self, input_shape: list[Shape]) -> None:
        skip = as_shape(input_shape[0])
        rank = len(skip)
        axis = channel_axis(self.data_format, rank)
        init = keras.initializers.Constant(self.bias)
        kw: dict[str, Any] = {"bias_initializer": init, "dtype": self.dtype_policy, "name": "T"}
        if axis == rank - 1:
            self.transform = keras.layers.Dense(skip[axis], **kw)
        else:
            self.transform = _CONV[rank](skip[axis], 1, data_format=self.data_format, **kw)
        self.transform.build(skip)

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        assert self.transform is not None
        t = ops.sigmoid(self.transform(skip))
        return t * branch + (1.0 - t) * skip

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        return as_shape(input_shape[1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bias": self.bias, "data_format": self.data_format}


@_register
class Scale(_MaskedMerge):
    """``y = skip + alpha * branch`` with a learned ``alpha`` (ReZero, LayerScale).

    ``Scale()`` is ReZero (Bachlechner et al. 2020): one scalar ``alpha`` starting at 0, so the
    block is the identity at init. ``Scale(1e-5, per_channel=True)`` is LayerScale.

    Shapes: ``[(N, …, C), (N, …, C)] -> (N, …, C)``.

    Args:
        init: initial value of ``alpha``.
        per_channel: one ``alpha`` per channel (shape ``(C,)``) instead of a scalar.
        data_format: where the channels are, for ``per_channel`` on rank >= 3 maps.
    """

    joins_channels = False

    def __init__(
        self,
        init: float = 0.0,
        per_channel: bool = False,
        data_format: str = "channels_last",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.init = float(init)
        self.per_channel = per_channel
        self.data_format = data_format
        self._broadcast: tuple[int, ...] = ()

    def build(self, input_shape: list[Shape]) -> None:
        branch = as_shape(input_shape[1])
        shape: tuple[int, ...] = ()
        if self.per_channel:
            axis = channel_axis(self.data_format, len(branch))
            channels = branch[axis]
            if channels is None:
                raise ValueError(f"{self.name}: per_channel needs a known channel dim")
            shape = (channels,)
            # (C,) broadcasts against channels last; channels first needs (C, 1, …, 1).
            self._broadcast = (channels,) + (1,) * (len(branch) - 1 - axis)
        self.alpha = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(self.init), name="alpha"
        )

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        alpha = ops.reshape(self.alpha, self._broadcast) if self.per_channel else self.alpha
        return skip + ops.cast(alpha, self.compute_dtype) * branch

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        return as_shape(input_shape[1])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "init": self.init,
            "per_channel": self.per_channel,
            "data_format": self.data_format,
        }
