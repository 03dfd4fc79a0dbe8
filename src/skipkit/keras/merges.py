"""Merge layers: how the skip joins the main path. One protocol: ``merge([skip, branch])``.

``skip`` (``s``) is the shortcut's output and ``branch`` (``b``) the body's; both are
``(N, …, C)`` maps (``(N, C, …)`` channels first). ``Residual(merge=...)`` takes the strings of
the PyTorch front (:data:`skipkit.merges.MERGES`), each the same formula with the same initial
values and parameter shapes:

===================  ===============================================  ===========================
string               layer                                            formula
===================  ===============================================  ===========================
``add``              :class:`Add`                                     ``s + b``
``concat``           :class:`Concat`                                  ``cat([b, s], C)``
``mul``              :class:`Mul`                                     ``s * b``
``film``             :class:`Film`                                    ``b * (1 + s)``
``gate``             :class:`Gate` (Highway, ``c`` starts at -2)      ``T*b + (1 - T)*s``
``tanh_gate``        :class:`TanhGate` (``W = 0, c = 0``)             ``b + tanh(W s + c) * s``
``rezero``           :class:`Scale` ``(0)``                           ``s + α*b``
``skipinit``         :class:`Scale` ``(0)``                           ``s + α*b``
``layerscale``       :class:`Scale` ``(1e-5, per_channel=True)``      ``s + γ_c*b``
``rezero_skip``      :class:`Scale` ``(0, on="skip")``                ``b + α*s``
``layerscale_skip``  :class:`Scale` (``layerscale``, on the skip)     ``b + γ_c*s``
``weighted``         :class:`WeightedSum` (``a = w = 1``)             ``a*s + w*b``
===================  ===============================================  ===========================

(``T = sigmoid(W s + c)``; ``W s + c`` is a ``Dense`` on the channel axis, a 1x1 convolution
for channels-first maps.) Any Keras merge layer taking ``[skip, branch]`` works too
(``keras.layers.Multiply()``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from skipkit.keras._shapes import Shape, as_shape, channel_axis, fmt

_register = keras.saving.register_keras_serializable(package="skipkit")
_CONV = {3: keras.layers.Conv1D, 4: keras.layers.Conv2D, 5: keras.layers.Conv3D}


class Merge(keras.layers.Layer):
    """Base class of skipkit's merge layers (the Keras side of :class:`skipkit.merges.Merge`):
    ``call([skip, branch])``, shapes checked by :class:`skipkit.keras.Residual` at build.
    Masks pass: a step is valid where both paths are (a path without a mask is valid
    everywhere).

    :meth:`without_skip` is the plain twin's merge (the skip path removed), as
    :meth:`skipkit.merges.Merge.without_skip` computes it for the same string.

    Attributes:
        joins_channels: the output stacks both paths' channels (only the other dims must agree).
        formula: what ``call`` computes, in ``s`` (the skip) and ``b`` (the branch), written as
            :attr:`skipkit.merges.Merge.formula` writes it for the same string.
    """

    joins_channels = False
    formula = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def without_skip(self, branch: Any) -> Any:
        """The merge with the skip path removed, on the branch ``(N, …, C')`` alone: ``b``
        here; the merges that scale the branch or keep the skip's channels override it."""
        return branch

    def build_without_skip(self, input_shape: list[Shape]) -> None:
        """Build what :meth:`without_skip` needs for ``[skip, branch]`` shapes (all of
        :meth:`build` here; a gate, whose weights only read the skip, builds none)."""
        self.build(input_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        masks = [m for m in (mask or ()) if m is not None]
        if len(masks) < 2:
            return masks[0] if masks else None
        return ops.logical_and(masks[0], masks[1])

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        return as_shape(input_shape[1])


@_register
class Add(Merge):
    """``y = skip + branch``; both ``(N, …)`` of one shape."""

    formula = "s + b"

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        return ops.add(skip, branch)


@_register
class Mul(Merge):
    """``y = skip * branch``; both ``(N, …)`` of one shape. It is 0 wherever the skip is:
    :class:`Film` is the product that starts as the branch."""

    formula = "s * b"

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        return ops.multiply(skip, branch)


@_register
class Film(Merge):
    """FiLM-style modulation ``y = branch * (1 + skip)``; both ``(N, …)`` of one shape.

    Equals the branch while the skip is zero (a zero-initialised shortcut).
    """

    formula = "b * (1 + s)"

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        return branch * (1.0 + skip)


@_register
class Concat(Merge):
    """``y = concat([branch, skip], axis)``: ``(N, …, C) + (N, …, C') -> (N, …, C' + C)``.

    The branch comes first, as in the PyTorch front (DenseNet's ``cat([new, old])``).

    Args:
        axis: the channel axis; ``-1`` (channels last) by default, ``1`` for channels first.
        branch_first: ``False`` puts the skip first, ``concat([skip, branch])``: what this layer
            computed before it matched the PyTorch front, and what a ``.keras`` file saved then
            (whose config has no ``branch_first``) keeps computing when loaded.
    """

    joins_channels = True

    def __init__(self, axis: int = -1, branch_first: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis
        self.branch_first = bool(branch_first)
        self.formula = "cat([b, s], C)" if self.branch_first else "cat([s, b], C)"
        self.skip_channels: int | None = None  # set in build, for without_skip

    def build(self, input_shape: list[Shape]) -> None:
        skip = as_shape(input_shape[0])
        self.skip_channels = skip[self.axis % len(skip)]

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        parts = [branch, skip] if self.branch_first else [skip, branch]
        return ops.concatenate(parts, axis=self.axis)

    def without_skip(self, branch: Any) -> Any:
        """``cat([b, 0])``: zeros in the skip's channels keep the output's width,
        ``(N, …, C') -> (N, …, C' + C)``."""
        if self.skip_channels is None:
            raise ValueError(
                f"{self.name}: Concat.without_skip needs the skip's channel count, unknown "
                "until build([skip_shape, branch_shape]) with a known channel dim. Fix: give "
                "keras.Input the channel count"
            )
        one = ops.zeros_like(ops.take(branch, [0], axis=self.axis))  # (N, …, 1)
        return self.call([ops.repeat(one, self.skip_channels, axis=self.axis), branch])

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        skip, branch = as_shape(input_shape[0]), as_shape(input_shape[1])
        axis = self.axis % len(skip)
        out = list(branch)
        c_skip, c_branch = skip[axis], branch[axis]
        out[axis] = None if c_skip is None or c_branch is None else c_skip + c_branch
        return tuple(out)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis, "branch_first": self.branch_first}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Concat:
        # a config without the key was saved when the skip came first
        return cls(**{"branch_first": False, **config})


def _torch_uniform() -> keras.initializers.Initializer:
    """What torch's ``nn.Linear`` / ``nn.ConvNd`` draw their weight from: ``U(±1/sqrt(fan_in))``
    (Kaiming uniform with ``a = sqrt(5)``), so a gate starts as in the PyTorch front."""
    return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


class _SkipTransform(Merge):
    """A merge with a learned map of the skip, ``W s + c``, one output per channel: a ``Dense``
    on the channel axis (channels last) or a 1x1 ``ConvND`` (channels first), as the PyTorch
    front's ``nn.Linear`` / 1x1 ``nn.ConvNd``, and drawn as they are. ``W``: ``(C, C)``
    (``(1, …, 1, C, C)`` conv), ``c``: ``(C,)``.
    """

    zero_kernel = False
    transform_name = "W"

    def __init__(self, bias: float, data_format: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bias = float(bias)
        self.data_format = data_format
        self.transform: keras.layers.Layer | None = None

    def build(self, input_shape: list[Shape]) -> None:
        skip = as_shape(input_shape[0])
        rank = len(skip)
        axis = channel_axis(self.data_format, rank)
        channels = skip[axis]
        if channels is None:
            raise ValueError(
                f"{self.name}: {type(self).__name__} needs the channel dim known at build, got "
                f"skip shape {fmt(skip)} (axis {axis}). Fix: give keras.Input the channel count"
            )
        kw: dict[str, Any] = {
            "kernel_initializer": "zeros" if self.zero_kernel else _torch_uniform(),
            "bias_initializer": keras.initializers.Constant(self.bias),
            "dtype": self.dtype_policy,
            "name": self.transform_name,
        }
        if axis == rank - 1:
            self.transform = keras.layers.Dense(channels, **kw)
        else:
            self.transform = _CONV[rank](channels, 1, data_format=self.data_format, **kw)
        self.transform.build(skip)

    def build_without_skip(self, input_shape: list[Shape]) -> None:
        self.built = True  # W s + c reads the skip only: the plain twin has no use for it

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format}


@_register
class Gate(_SkipTransform):
    """Highway gate: ``T = sigmoid(W s + c)``, ``y = T * branch + (1 - T) * skip``.

    ``W s + c`` (see the module table) maps the skip ``s`` (the block input, or its
    projection) to one gate per output channel; ``W`` is drawn as PyTorch draws an
    ``nn.Linear`` weight, ``U(±1/sqrt(C))``. The bias starts at ``bias`` (-2 by default,
    Srivastava et al. 2015), so ``T ≈ 0.12`` at init and the block begins close to carrying
    its input through.

    Shapes: ``[(N, …, C), (N, …, C)] -> (N, …, C)``.

    Args:
        bias: initial value of the gate's bias.
        data_format: ``"channels_last"`` or ``"channels_first"`` (for rank >= 3 maps).
    """

    formula = "T*b + (1 - T)*s, T = sigmoid(W s + c)"
    transform_name = "T"  # the name saved .keras files hold the gate's weights under

    def __init__(
        self, bias: float = -2.0, data_format: str = "channels_last", **kwargs: Any
    ) -> None:
        super().__init__(bias, data_format, **kwargs)

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        assert self.transform is not None
        t = ops.sigmoid(self.transform(skip))
        return t * branch + (1.0 - t) * skip

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bias": self.bias}


@_register
class TanhGate(_SkipTransform):
    """A gate that starts closed: ``y = branch + tanh(W s + c) * skip``.

    ``W`` and ``c`` (see the module table) start at zero, so the block starts as the branch
    alone (Flamingo's tanh gating, per position and channel as a Highway gate); ``c``'s
    gradient ``g * s`` is not zero, so the gate opens as it learns.

    Shapes: ``[(N, …, C), (N, …, C)] -> (N, …, C)``.

    Args:
        data_format: ``"channels_last"`` or ``"channels_first"`` (for rank >= 3 maps).
    """

    formula = "b + tanh(W s + c) * s"
    zero_kernel = True

    def __init__(self, data_format: str = "channels_last", **kwargs: Any) -> None:
        super().__init__(0.0, data_format, **kwargs)

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        assert self.transform is not None
        return branch + ops.tanh(self.transform(skip)) * skip


@_register
class Scale(Merge):
    """``y = skip + alpha * branch`` with a learned ``alpha`` (ReZero, SkipInit, LayerScale);
    with ``on="skip"``, ``y = branch + alpha * skip``.

    ``Scale()`` is ReZero (Bachlechner et al. 2020): one scalar ``alpha`` starting at 0, so the
    block is the identity at init. ``Scale(1e-5, per_channel=True)`` is LayerScale.
    ``on="skip"`` scales the skip instead, for a skip added to a trained path: the block starts
    as the branch alone (``alpha = 0``) or close to it (``1e-5``).

    Shapes: ``[(N, …, C), (N, …, C)] -> (N, …, C)``.

    Args:
        init: initial value of ``alpha``.
        per_channel: one ``alpha`` per channel (shape ``(C,)``) instead of a scalar.
        on: ``"branch"`` or ``"skip"``: the path ``alpha`` scales.
        data_format: where the channels are, for ``per_channel`` on rank >= 3 maps.
    """

    def __init__(
        self,
        init: float = 0.0,
        per_channel: bool = False,
        data_format: str = "channels_last",
        on: str = "branch",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on not in ("branch", "skip"):
            raise ValueError(f"Scale(on=...) must be 'branch' or 'skip', got {on!r}")
        self.init = float(init)
        self.per_channel = per_channel
        self.data_format = data_format
        self.on = on
        factor = "γ_c" if per_channel else "α"
        self.formula = f"b + {factor}*s" if on == "skip" else f"s + {factor}*b"
        self._broadcast: tuple[int, ...] = ()

    def build(self, input_shape: list[Shape]) -> None:
        branch = as_shape(input_shape[1])
        shape: tuple[int, ...] = ()
        if self.per_channel:
            axis = channel_axis(self.data_format, len(branch))
            channels = branch[axis]
            if channels is None:
                raise ValueError(
                    f"{self.name}: a per-channel Scale needs the channel dim known at build, "
                    f"got branch shape {fmt(branch)} (axis {axis}). Fix: give keras.Input the "
                    "channel count, or use a scalar scale ('rezero', 'rezero_skip')"
                )
            shape = (channels,)
            # (C,) broadcasts against channels last; channels first needs (C, 1, …, 1).
            self._broadcast = (channels,) + (1,) * (len(branch) - 1 - axis)
        self.alpha = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(self.init), name="alpha"
        )

    def _factor(self) -> Any:
        alpha = ops.reshape(self.alpha, self._broadcast) if self.per_channel else self.alpha
        return ops.cast(alpha, self.compute_dtype)

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        alpha = self._factor()
        return branch + alpha * skip if self.on == "skip" else skip + alpha * branch

    def build_without_skip(self, input_shape: list[Shape]) -> None:
        if self.on == "skip":
            self.built = True  # the factor scales the skip only: the plain twin has no use for it
        else:
            self.build(input_shape)

    def load_own_variables(self, store: Any) -> None:
        if self.built and not self.weights and len(store.keys()) == 1:
            return  # a plain twin loading its skip block's factor, which it has no use for
        super().load_own_variables(store)

    def without_skip(self, branch: Any) -> Any:
        """``α*b`` (``γ_c*b``) when the factor is on the branch, else ``b``."""
        return branch if self.on == "skip" else self._factor() * branch

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "init": self.init,
            "per_channel": self.per_channel,
            "data_format": self.data_format,
            "on": self.on,
        }


@_register
class WeightedSum(Merge):
    """Learned weighted sum (DenseFormer-style): ``y = a * skip + w * branch``.

    ``mix = [a, w]``, shape ``(2,)``, starts at ``[skip_weight, branch_weight]`` (``[1, 1]``:
    the plain residual sum; ``[0, 1]``: the branch alone).

    Shapes: ``[(N, …), (N, …)] -> (N, …)``.
    """

    formula = "a*s + w*b"

    def __init__(self, skip_weight: float = 1.0, branch_weight: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.skip_weight = float(skip_weight)
        self.branch_weight = float(branch_weight)

    def build(self, input_shape: list[Shape]) -> None:
        start = (self.skip_weight, self.branch_weight)

        def init(shape: Any, dtype: Any = None) -> Any:
            return ops.convert_to_tensor(start, dtype=dtype)

        self.mix = self.add_weight(shape=(2,), initializer=init, name="mix")

    def call(self, inputs: list[Any]) -> Any:
        skip, branch = inputs
        mix = ops.cast(self.mix, self.compute_dtype)
        return mix[0] * skip + mix[1] * branch

    def without_skip(self, branch: Any) -> Any:
        """``w*b``."""
        return ops.cast(self.mix, self.compute_dtype)[1] * branch

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "skip_weight": self.skip_weight,
            "branch_weight": self.branch_weight,
        }


# (data_format, rank, layer kwargs) -> the layer a string stands for
MERGES: dict[str, Callable[..., keras.layers.Layer]] = {
    "add": lambda fmt, rank, **kw: Add(**kw),
    "concat": lambda fmt, rank, **kw: Concat(axis=channel_axis(fmt, rank), **kw),
    "mul": lambda fmt, rank, **kw: Mul(**kw),
    "film": lambda fmt, rank, **kw: Film(**kw),
    "gate": lambda fmt, rank, **kw: Gate(data_format=fmt, **kw),
    "tanh_gate": lambda fmt, rank, **kw: TanhGate(data_format=fmt, **kw),
    "rezero": lambda fmt, rank, **kw: Scale(0.0, data_format=fmt, **kw),
    "skipinit": lambda fmt, rank, **kw: Scale(0.0, data_format=fmt, **kw),
    "layerscale": lambda fmt, rank, **kw: Scale(1e-5, True, fmt, **kw),
    "rezero_skip": lambda fmt, rank, **kw: Scale(0.0, data_format=fmt, on="skip", **kw),
    "layerscale_skip": lambda fmt, rank, **kw: Scale(1e-5, True, fmt, on="skip", **kw),
    "weighted": lambda fmt, rank, **kw: WeightedSum(**kw),
}


def check_merge(spec: Any) -> None:
    """A merge string must be one of :data:`MERGES` (layers pass unchecked).

    Raises:
        ValueError: an unknown string, naming it, the choices, the nearest one and the fix.
    """
    if not isinstance(spec, str) or spec in MERGES:
        return
    near = difflib.get_close_matches(spec, MERGES, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(
        f"unknown merge {spec!r}{hint}; choose one of {', '.join(map(repr, MERGES))} (the "
        "formulas of the PyTorch front's skipkit.merges.MERGES), or pass a Keras layer called "
        "on [skip, branch], such as skipkit.keras.Scale(0.5) or keras.layers.Multiply()"
    )


def merge_layer(spec: str, /, *, data_format: str, rank: int, **kwargs: Any) -> keras.layers.Layer:
    """The merge layer the string ``spec`` stands for, for rank-``rank`` maps in
    ``data_format``; ``kwargs`` go to the layer (``name``, ``dtype``)."""
    check_merge(spec)
    return MERGES[spec](data_format, rank, **kwargs)
