"""Keras 3 residual layers: :class:`Residual` and :class:`Highway`.

```
        ┌──────── shortcut (identity | Dense | 1x1 ConvND) ────────┐
  x ────┤                                                          merge ── post ──> y
        └──────── body (any Keras layer, Sequential or list) ──────┘
```

Shapes are planned in ``build`` from the input shape and the body's output shape, so the
layers work in the functional API, in ``keras.Sequential`` and in subclassed models, and
save / load with ``model.save("m.keras")`` / ``keras.models.load_model``.
"""

from __future__ import annotations

from typing import Any

import keras

from skipkit.keras._config import (
    LayerLike,
    PostLike,
    as_layer,
    as_post,
    call_masked,
    check_choice,
    check_data_format,
    check_skip_flag,
    deserialize,
    function_name,
    serialize,
)
from skipkit.keras._shapes import (
    Shape,
    as_shape,
    channel_axis,
    fmt,
    mismatch,
    output_shape,
    spatial_format,
)
from skipkit.keras._tracing import note_trace
from skipkit.keras.merges import Concat, Gate, Merge, check_merge, merge_layer
from skipkit.keras.shortcuts import plan_shortcut

_register = keras.saving.register_keras_serializable(package="skipkit")
_SHORTCUTS = ("auto", "identity", "project")
_PROBE = 64  # stands in for unknown sizes when planning strides


def _check_skip(skip: Any, *, shortcut: Any, merge: Any, path: str) -> None:
    """``skip`` is a bool; ``skip=False`` needs parts whose plain twin is known."""
    check_skip_flag(skip, path)
    if skip:
        return
    if not isinstance(shortcut, str):
        raise ValueError(
            f"{path}: skip=False builds the plain twin, which has no shortcut, but shortcut= "
            f"is a {type(shortcut).__name__} layer. Fix: leave shortcut at its default "
            "('auto'), or use skip=True"
        )
    if not isinstance(merge, (str, Merge)):
        raise TypeError(
            f"{path}: skip=False needs a merge whose plain twin is known: a string or a "
            f"skipkit.keras merge layer, got {type(merge).__name__}. Fix: pass the string "
            "(merge='mul' for keras.layers.Multiply, 'add' for keras.layers.Add)"
        )


@_register
class Residual(keras.layers.Layer):
    """``y = post(merge(shortcut(x), body(x)))``: a skip connection around ``body``.

    Shapes (channels last; ``(N, C, …)`` channels first):

    - every merge but concat: ``(N, …, C) -> (N, …', C')``, the body's shape.
    - ``merge="concat"``: ``(N, …, C) -> (N, …', C' + C)``, the branch's channels first.

    ``shortcut="auto"`` is the identity when the shapes match; otherwise a ``Dense(C')`` for
    feature vectors and sequences, or a 1x1 ``Conv1D/2D/3D(C', strides=s)`` when the body
    convolves or pools, with ``s`` chosen so that ``ceil(size / s)`` is the body's size
    (``28 -> 14`` and ``7 -> 4`` are both stride 2).

    Args:
        body: the main path: a Keras layer, a ``keras.Sequential`` or a list of layers.
        shortcut: ``"auto"``, ``"identity"`` (shapes must match), ``"project"`` (always a
            ``Dense`` / 1x1 conv), or any Keras layer mapping ``x`` to the branch's shape.
        merge: a string of the PyTorch front's vocabulary (:data:`skipkit.merges.MERGES`), the
            same formula in ``s = shortcut(x)`` and ``b = body(x)``, with the same initial
            values and parameter shapes (see :mod:`skipkit.keras.merges`): ``"add"``
            (``s + b``), ``"concat"`` (``cat([b, s])`` on the channel axis), ``"mul"``
            (``s * b``), ``"film"`` (``b * (1 + s)``), ``"gate"`` (Highway,
            ``T * b + (1 - T) * s``, ``T = sigmoid(W s + c)``, ``c`` starts at -2),
            ``"tanh_gate"`` (``b + tanh(W s + c) * s``, ``W = c = 0``), ``"rezero"`` /
            ``"skipinit"`` (``s + alpha * b``, ``alpha`` starts at 0), ``"layerscale"``
            (``s + gamma_c * b``, ``gamma`` per channel, ``1e-5``), ``"rezero_skip"`` /
            ``"layerscale_skip"`` (the same factors on the skip: ``b + alpha * s``),
            ``"weighted"`` (``a * s + w * b``, ``a = w = 1``); or a merge layer called on
            ``[skip, branch]`` (:class:`Add`, :class:`Concat`, :class:`Mul`, :class:`Film`,
            :class:`Gate`, :class:`TanhGate`, :class:`Scale`, :class:`WeightedSum`,
            ``keras.layers.*``).
        post: applied after the merge: an activation name (``"relu"``), a function
            (``keras.activations.relu``; to save the model, a Keras activation or one registered
            with ``keras.saving.register_keras_serializable``), a layer, or ``None``.
        data_format: ``"channels_last"`` / ``"channels_first"``; by default that of the body's
            convolutions, else channels last.
        skip: ``False`` builds the plain twin: the same body and merge with the skip path
            removed and no shortcut weights, ``y = post(merge.without_skip(body(x)))``, as
            the PyTorch front's ``Merge.without_skip`` computes it for the same string (``b``;
            ``alpha * b`` for ``"rezero"`` / ``"skipinit"`` / ``"layerscale"``, ``w * b`` for
            ``"weighted"``; ``concat([b, 0])`` for ``"concat"``, zeros in the skip's channels).
            :func:`skipkit.keras.skips_disabled` switches a ``skip=True`` block to the same
            function at run time.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ``trainable``).

    Masks (``Masking``, ``Embedding(mask_zero=True)``) reach every sublayer whose ``call``
    takes one and pass on to the next layer, so padded steps change nothing on the valid ones.

    Raises:
        ValueError: ``merge`` is a string outside that vocabulary (the message lists it);
            ``skip=False`` with a shortcut layer.
        TypeError: ``skip`` is not a bool; ``skip=False`` with a merge layer that is not one
            of skipkit's (its plain twin is not known).
        ShapeMismatchError: at build, when no shortcut can make ``x`` fit the body's output
            (the rank or a sequence length changes, a size grows, no integer stride fits).

    Example:
        >>> block = Residual(keras.layers.Dense(64, activation="relu"))  # 10 -> 64 projects
        >>> tuple(block(keras.ops.ones((2, 10))).shape)
        (2, 64)
    """

    def __init__(
        self,
        body: LayerLike,
        *,
        shortcut: str | keras.layers.Layer = "auto",
        merge: str | keras.layers.Layer = "add",
        post: PostLike = None,
        data_format: str | None = None,
        skip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True
        check_choice(shortcut, _SHORTCUTS, "shortcut")
        check_merge(merge)
        check_data_format(data_format)
        _check_skip(skip, shortcut=shortcut, merge=merge, path=self.name)
        self.skip = skip
        self._skip_enabled = skip
        self.body = as_layer(body, "body")
        self.data_format = data_format
        # Strings are shorthands kept for get_config; the layers they stand for are made in
        # build, once the shapes and data format are known.
        self.shortcut_spec = shortcut if isinstance(shortcut, str) else None
        self.shortcut: keras.layers.Layer | None = (
            None if isinstance(shortcut, str) else as_layer(shortcut, "shortcut")
        )
        self.merge_spec = merge if isinstance(merge, str) else None
        self.merge: keras.layers.Layer | None = (
            None if isinstance(merge, str) else as_layer(merge, "merge")
        )
        self.post_spec = post if isinstance(post, str) else None
        # A plain function is named only when the layer is saved (an unregistered one cannot be).
        self.post_fn = post if callable(post) and not isinstance(post, keras.layers.Layer) else None
        self.post: keras.layers.Layer | None = as_post(post)
        self._keeps_steps = True  # set in build: the output has the input's steps / positions
        # False only for a block loaded from a .keras file saved when "concat" put the skip
        # first: it keeps the order its later layers were trained on (see from_config)
        self._concat_branch_first = True

    def _make_merge(self, name: str, data_format: str, rank: int) -> keras.layers.Layer:
        kw: dict[str, Any] = {"dtype": self.dtype_policy, "name": "merge"}
        if name == "concat" and not self._concat_branch_first:
            return Concat(axis=channel_axis(data_format, rank), branch_first=False, **kw)
        return merge_layer(name, data_format=data_format, rank=rank, **kw)

    @property
    def skip_enabled(self) -> bool:
        """Whether the skip path is on: ``False`` for ``skip=False`` and inside
        :func:`skipkit.keras.skips_disabled`, where ``call`` computes the plain twin."""
        return self._skip_enabled

    @skip_enabled.setter
    def skip_enabled(self, value: bool) -> None:
        if value and not self.skip:
            raise ValueError(
                f"{self.name}: built with skip=False, it has no shortcut to switch on. Fix: "
                "build the block with skip=True (the default)"
            )
        self._skip_enabled = bool(value)

    def build(self, input_shape: Shape) -> None:
        x_shape = as_shape(input_shape)
        h_shape = output_shape(self.body, x_shape)  # (N, …, C) -> (N, …', C')
        conv_format = spatial_format(self.body)
        data_format = self.data_format or conv_format or "channels_last"
        rank = len(x_shape)
        if self.merge is None:
            assert self.merge_spec is not None
            self.merge = self._make_merge(self.merge_spec, data_format, rank)
        axis = channel_axis(data_format, rank)
        self._keeps_steps = len(h_shape) == rank and all(
            x_shape[d] == h_shape[d] for d in range(1, rank) if d != axis
        )
        if not self.skip:
            self._build_plain(x_shape, h_shape, axis)
            return
        joins_channels = bool(getattr(self.merge, "joins_channels", False))
        if self.shortcut_spec in ("auto", "project"):
            self.shortcut = plan_shortcut(
                x_shape,
                h_shape,
                data_format=data_format,
                spatial=conv_format is not None,
                keep_channels=joins_channels,
                force=self.shortcut_spec == "project",
                probe=self._probe(x_shape, h_shape),
                path=self.name,
                name="shortcut",
                dtype=self.dtype_policy,
            )
        # (N, …, C) -> (N, …', C'), or (N, …', C) before a concat
        s_shape = x_shape if self.shortcut is None else output_shape(self.shortcut, x_shape)
        self._check_join(s_shape, h_shape, data_format, joins_channels)
        if not self.merge.built:  # a deserialized merge layer comes built
            self.merge.build([s_shape, h_shape])
        self._build_post(s_shape, h_shape)

    def _build_plain(self, x_shape: Shape, h_shape: Shape, axis: int) -> None:
        """The plain twin's parts: no shortcut, and of the merge what ``without_skip`` uses."""
        assert isinstance(self.merge, Merge), "_check_skip admits skipkit merges only"
        s_shape = self._plain_skip_shape(x_shape, h_shape, axis)
        if not self.merge.built:
            self.merge.build_without_skip([s_shape, h_shape])
        self._build_post(s_shape, h_shape)

    def _plain_skip_shape(self, x_shape: Shape, h_shape: Shape, axis: int) -> Shape:
        """The skip's shape as ``shortcut="auto"`` would plan it: the branch's, but for a
        concatenation the input's channels (what ``without_skip`` fills with zeros)."""
        if not getattr(self.merge, "joins_channels", False) or len(x_shape) != len(h_shape):
            return h_shape
        return tuple(x_shape[d] if d == axis else n for d, n in enumerate(h_shape))

    def _build_post(self, s_shape: Shape, h_shape: Shape) -> None:
        assert self.merge is not None
        if self.post is not None and not self.post.built:
            self.post.build(as_shape(self.merge.compute_output_shape([s_shape, h_shape])))

    def _probe(self, x_shape: Shape, h_shape: Shape) -> tuple[Shape, Shape] | None:
        """The body's shapes at size 64 for dims unknown on both sides, if it takes them."""
        unknown = [
            d
            for d in range(1, len(x_shape))
            if x_shape[d] is None and d < len(h_shape) and h_shape[d] is None
        ]
        if not unknown:
            return None
        probe_in = tuple(_PROBE if d in unknown else n for d, n in enumerate(x_shape))
        try:
            return probe_in, output_shape(self.body, probe_in)
        except Exception:  # a body that only takes unknown sizes cannot be probed
            return None

    def _check_join(
        self, s_shape: Shape, h_shape: Shape, data_format: str, joins_channels: bool
    ) -> None:
        if self.merge_spec is None and not isinstance(self.merge, Merge):
            return  # a foreign merge layer checks its own inputs
        skip_axis = channel_axis(data_format, len(s_shape)) if joins_channels else None
        pairs = enumerate(zip(s_shape, h_shape, strict=True))
        ok = len(s_shape) == len(h_shape) and all(
            a == b for d, (a, b) in pairs if d not in (0, skip_axis)
        )
        if ok:
            return
        if self.shortcut_spec == "identity":
            fixes = ["use shortcut='auto' to project the input", "make the body keep the shape"]
        else:
            fixes = [f"make the shortcut layer output {fmt(h_shape)}"]
        what = "all dims but the channels" if joins_channels else "the same shape"
        raise mismatch(
            self.name,
            f"the {type(self.merge).__name__} merge needs {what} on both paths",
            skip=s_shape,
            branch=h_shape,
            fixes=fixes,
        )

    def call(self, x: Any, mask: Any = None) -> Any:
        # mask: (N, T) for sequences, passed to the layers that use it (LSTM, attention)
        note_trace(self, x)  # a compiled function keeps the skip_enabled it was traced with
        h = call_masked(self.body, x, mask)  # branch: (N, …', C')
        assert self.merge is not None, "merge is made in build"
        if self.skip_enabled:
            s = x if self.shortcut is None else call_masked(self.shortcut, x, mask)  # (N, …', C'|C)
            y = self.merge([s, h])
        else:
            assert isinstance(self.merge, Merge), "_check_skip admits skipkit merges only"
            y = self.merge.without_skip(h)  # the plain twin: the merge of the branch alone
        return y if self.post is None else call_masked(self.post, y, self.compute_mask(x, mask))

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """The input's mask while the block keeps its steps (as a Keras ``Add`` of the two
        paths gives); ``None`` once a strided body changes the positions."""
        return mask if self._keeps_steps else None

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        x_shape = as_shape(input_shape)
        if not self.built:
            self.build(x_shape)
        assert self.merge is not None
        h_shape = output_shape(self.body, x_shape)
        if not self.skip:
            data_format = self.data_format or spatial_format(self.body) or "channels_last"
            axis = channel_axis(data_format, len(x_shape))
            s_shape = self._plain_skip_shape(x_shape, h_shape, axis)
        else:
            s_shape = x_shape if self.shortcut is None else output_shape(self.shortcut, x_shape)
        y_shape = as_shape(self.merge.compute_output_shape([s_shape, h_shape]))
        return y_shape if self.post is None else output_shape(self.post, y_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            body=serialize(self.body),
            shortcut=self.shortcut_spec or serialize(self.shortcut),
            merge=self.merge_spec or serialize(self.merge),
            post=self.post_spec
            or (function_name(self.post_fn, self.name) if self.post_fn else serialize(self.post)),
            data_format=self.data_format,
            skip=self.skip,
        )
        if self.merge_spec == "concat":
            config["concat_branch_first"] = self._concat_branch_first
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Residual:
        config = dict(config)
        # a "concat" saved without the key is from before it meant cat([b, s]): skip first
        branch_first = bool(config.pop("concat_branch_first", False))
        for key in ("body", "shortcut", "merge", "post"):
            if key in config:
                config[key] = deserialize(config[key])
        block = cls(**config)
        block._concat_branch_first = branch_first
        return block


@_register
class Highway(Residual):
    """Highway layer (Srivastava et al. 2015): ``y = T * body(x) + (1 - T) * shortcut(x)``.

    ``T = sigmoid(W s + b)`` has one gate per output channel, with ``b`` starting at
    ``gate_bias`` so that the layer first carries its input. Shapes as the body's:
    ``(N, …, C) -> (N, …', C')``; the shortcut projects (``Dense`` / 1x1 conv) when ``C != C'``.

    Args:
        body: the transform ``H``: a Keras layer, ``keras.Sequential`` or list of layers.
        gate_bias: initial bias of the transform gate; negative favours carrying ``x``.
        shortcut, post, data_format: as for :class:`Residual`.
        skip: ``False`` builds the plain net Srivastava et al. compare highways against,
            ``post(body(x))``: no shortcut and no gate weights.
        **kwargs: as for :class:`Residual`.
    """

    def __init__(
        self,
        body: LayerLike,
        *,
        gate_bias: float = -2.0,
        shortcut: str | keras.layers.Layer = "auto",
        post: PostLike = None,
        data_format: str | None = None,
        skip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            body,
            shortcut=shortcut,
            merge="gate",
            post=post,
            data_format=data_format,
            skip=skip,
            **kwargs,
        )
        self.gate_bias = float(gate_bias)

    def _make_merge(self, name: str, data_format: str, rank: int) -> keras.layers.Layer:
        return Gate(self.gate_bias, data_format=data_format, dtype=self.dtype_policy, name="merge")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["merge"]
        config["gate_bias"] = self.gate_bias
        return config
