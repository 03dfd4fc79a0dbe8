"""DenseNet blocks for Keras 3: :class:`DenseBlock` and the default :func:`dense_layer`.

```
  x ─┬─ layer0 ─┬─ layer1 ─┬─ …        layer i: concat(x, h0, …, h_{i-1}) -> h_i
     └──────────┴──────────┴── concat(x, h0, h1, …) = y
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

from skipkit.keras._config import (
    LayerLike,
    as_layer,
    call_masked,
    check_data_format,
    check_skip_flag,
    deserialize,
    serialize,
)
from skipkit.keras._shapes import (
    Shape,
    as_shape,
    channel_axis,
    mismatch,
    output_shape,
    spatial_format,
)
from skipkit.keras._tracing import note_trace

_register = keras.saving.register_keras_serializable(package="skipkit")
_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}

MakeLayer = Callable[[int, int], LayerLike]


def dense_layer(
    growth: int, *, dims: int = 2, bn_size: int = 4, data_format: str = "channels_last"
) -> keras.Sequential:
    """DenseNet-BC layer: BN-ReLU-Conv1x1 (``bn_size * growth``) then BN-ReLU-Conv3x3 (``growth``).

    ``(N, *S, C) -> (N, *S, growth)`` for ``dims`` spatial dims (1, 2 or 3); ``dims=0`` gives
    the same on feature vectors ``(N, C) -> (N, growth)`` with ``Dense`` layers.
    """
    axis = 1 if data_format == "channels_first" and dims > 0 else -1

    def norm_relu() -> list[keras.layers.Layer]:
        return [keras.layers.BatchNormalization(axis=axis), keras.layers.ReLU()]

    if dims == 0:
        return keras.Sequential(
            [
                *norm_relu(),
                keras.layers.Dense(bn_size * growth),
                *norm_relu(),
                keras.layers.Dense(growth),
            ]
        )
    if dims not in _CONV:
        raise ValueError(f"dense_layer needs dims in 0..3, got {dims}")
    conv = _CONV[dims]
    kw: dict[str, Any] = {"use_bias": False, "data_format": data_format}
    return keras.Sequential(
        [
            *norm_relu(),
            conv(bn_size * growth, 1, **kw),
            *norm_relu(),
            conv(growth, 3, padding="same", **kw),
        ]
    )


@_register
class DenseBlock(keras.layers.Layer):
    """DenseNet block (Huang et al. 2017): every layer sees all earlier feature maps.

    Shapes: ``(N, …, C) -> (N, …, C + L * g)`` for ``L`` layers adding ``g`` (growth) channels
    each; the concatenation is on the channel axis (last, or 1 for channels first). Each layer
    must keep every other dim (``padding="same"``, stride 1, ``return_sequences=True``), so an
    input mask (``Masking``, ``Embedding(mask_zero=True)``) reaches each layer and passes on.

    Args:
        make_layer: ``make_layer(in_channels, growth) -> layer`` mapping
            ``(N, …, in_channels) -> (N, …, growth)``, called ``num_layers`` times at build;
            ``None`` for :func:`dense_layer` (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, ``Dense`` for
            vectors); or a ready list of layers (each a layer or a list of layers).
        num_layers: how many layers to make; with a list, its length (checked when given).
        growth: channels each layer adds; required unless a list is given, where it is checked.
        bn_size: bottleneck width of the default layer, in multiples of ``growth``.
        data_format: ``"channels_last"`` / ``"channels_first"``; by default that of the
            layers' convolutions, else channels last.
        skip: ``False`` builds the plain twin, as the PyTorch front's ``DenseBlock`` computes
            it with its skips off: the same layers (same input widths, so the same weights),
            each seeing zeros in place of every earlier feature map but the one before it, and
            the output ``concat(0, …, 0, h_last)``, of the same shape.
            :func:`skipkit.keras.skips_disabled` switches a ``skip=True`` block to it.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        TypeError: ``skip`` is not a bool.
        ShapeMismatchError: at build, when a layer changes a non-channel dim or does not add
            ``growth`` channels.

    Example:
        >>> tuple(DenseBlock(num_layers=4, growth=12)(keras.ops.ones((2, 8, 8, 16))).shape)
        (2, 8, 8, 64)
        >>> conv = lambda c, g: keras.layers.Conv2D(g, 3, padding="same", activation="relu")
        >>> tuple(DenseBlock(conv, 2, 8)(keras.ops.ones((2, 8, 8, 16))).shape)
        (2, 8, 8, 32)
    """

    def __init__(
        self,
        make_layer: MakeLayer | Sequence[LayerLike] | None = None,
        num_layers: int | None = None,
        growth: int | None = None,
        *,
        bn_size: int = 4,
        data_format: str | None = None,
        skip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True  # every layer keeps the steps, so the mask stays valid
        check_data_format(data_format)
        check_skip_flag(skip, self.name)
        self.skip = skip
        self._skip_enabled = skip
        self.make_layer: MakeLayer | None = None
        self.block_layers: list[keras.layers.Layer] | None = None
        if isinstance(make_layer, (list, tuple)):
            if not make_layer:
                raise ValueError("DenseBlock got an empty list of layers")
            self.block_layers = [as_layer(m, f"layers[{i}]") for i, m in enumerate(make_layer)]
            if num_layers is not None and num_layers != len(self.block_layers):
                raise ValueError(
                    f"num_layers={num_layers} but {len(self.block_layers)} layers were given"
                )
            num_layers = len(self.block_layers)
        elif make_layer is None or (
            callable(make_layer) and not isinstance(make_layer, keras.layers.Layer)
        ):
            if num_layers is None or growth is None:
                raise TypeError("DenseBlock(make_layer, num_layers, growth) needs all three")
            self.make_layer = make_layer
        else:
            raise TypeError(
                "DenseBlock takes make_layer(in_channels, growth), a list of layers or None, "
                f"got {type(make_layer).__name__}"
            )
        if num_layers < 1 or (growth is not None and growth < 1):
            raise ValueError(
                f"DenseBlock needs num_layers >= 1 and growth >= 1, got {num_layers}, {growth}"
            )
        self.num_layers = num_layers
        self.growth = growth
        self.bn_size = bn_size
        self.data_format = data_format
        self._axis = -1

    @property
    def skip_enabled(self) -> bool:
        """Whether the skips are on: ``False`` for ``skip=False`` and inside
        :func:`skipkit.keras.skips_disabled`, where ``call`` computes the plain twin."""
        return self._skip_enabled

    @skip_enabled.setter
    def skip_enabled(self, value: bool) -> None:
        if value and not self.skip:
            raise ValueError(
                f"{self.name}: built with skip=False, its skips cannot be switched on. Fix: "
                "build the block with skip=True (the default)"
            )
        self._skip_enabled = bool(value)

    def _make_layers(self, shape: Shape, data_format: str) -> list[keras.layers.Layer]:
        assert self.growth is not None
        growth, axis = self.growth, channel_axis(data_format, len(shape))
        c = shape[axis]
        if c is None:
            raise ValueError(f"{self.name}: the channel dim of {shape} must be known")
        layers = []
        for i in range(self.num_layers):
            if self.make_layer is None:
                dims = len(shape) - 2
                layer = dense_layer(
                    growth, dims=dims, bn_size=self.bn_size, data_format=data_format
                )
            else:
                layer = self.make_layer(c + i * growth, growth)
            layers.append(as_layer(layer, f"make_layer({c + i * growth}, {growth})"))
        return layers

    def build(self, input_shape: Shape) -> None:
        shape = as_shape(input_shape)
        if self.block_layers is None:
            data_format = self.data_format or "channels_last"
            self.block_layers = self._make_layers(shape, data_format)
        found = (spatial_format(layer) for layer in self.block_layers)
        data_format = self.data_format or next((f for f in found if f), "channels_last")
        self._axis = axis = channel_axis(data_format, len(shape))
        for i, layer in enumerate(self.block_layers):
            h = output_shape(layer, shape)  # (N, …, C_i) -> (N, …, g)
            path = f"{self.name}.block_layers[{i}]"
            pairs = enumerate(zip(shape, h, strict=False))
            if len(h) != len(shape) or any(a != b for d, (a, b) in pairs if d not in (0, axis)):
                raise mismatch(
                    path,
                    "a dense layer must keep every dim but the channels",
                    skip=shape,
                    branch=h,
                    fixes=["use padding='same' and strides=1 (return_sequences=True for RNNs)"],
                )
            if self.growth is not None and h[axis] != self.growth:
                raise mismatch(
                    path,
                    f"the layer adds {h[axis]} channels, not growth={self.growth}",
                    skip=shape,
                    branch=h,
                    fixes=[f"make each layer output {self.growth} channels"],
                )
            shape = self._grow(shape, h)

    def _grow(self, shape: Shape, h: Shape) -> Shape:
        c, g = shape[self._axis], h[self._axis]
        out = list(shape)
        out[self._axis] = None if c is None or g is None else c + g
        return tuple(out)

    def call(self, x: Any, mask: Any = None) -> Any:
        assert self.block_layers is not None, "layers are made in build"
        note_trace(self, x)  # a compiled function keeps the skip_enabled it was traced with
        features = x  # (N, …, C); mask: (N, T) for sequences
        for layer in self.block_layers:
            h = call_masked(layer, features, mask)  # (N, …, g)
            # the plain twin: the earlier maps reach the next layer and the output only
            # through the skips, so they are zeros there
            kept = features if self.skip_enabled else keras.ops.zeros_like(features)
            features = keras.ops.concatenate([kept, h], axis=self._axis)
        return features  # (N, …, C + L * g)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        shape = as_shape(input_shape)
        if not self.built:
            self.build(shape)
        assert self.block_layers is not None
        for layer in self.block_layers:
            shape = self._grow(shape, output_shape(layer, shape))
        return shape

    def get_config(self) -> dict[str, Any]:
        if self.block_layers is None and self.make_layer is not None:
            raise ValueError(
                f"{self.name}: a DenseBlock with a make_layer callable can be saved once built "
                "(call it on an input, or pass a list of layers)"
            )
        config = super().get_config()
        config.update(
            make_layer=None
            if self.block_layers is None
            else [serialize(layer) for layer in self.block_layers],
            num_layers=self.num_layers,
            growth=self.growth,
            bn_size=self.bn_size,
            data_format=self.data_format,
            skip=self.skip,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DenseBlock:
        config = dict(config)
        if config.get("make_layer") is not None:
            config["make_layer"] = [deserialize(c) for c in config["make_layer"]]
        return cls(**config)
