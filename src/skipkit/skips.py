"""The core skips :class:`Residual`, :class:`Highway` and :func:`materialize`
(:class:`~skipkit.DenseBlock` lives in :mod:`skipkit.dense`; the protocol :class:`SkipModule`,
:class:`SkipInfo` and :func:`skips_disabled` in :mod:`skipkit.protocol`, re-exported here).

::

          ┌──────────── shortcut ─────────────┐
    x ──tap┤                                   merge ── post ──> y
          └──── body ── drop_path ────────────┘

``Residual(body)`` computes ``y = post(merge(shortcut(x), drop_path(body(x))))``; the
shortcut is planned from the input shape and the body's output shape, at construction when
``in_shape`` is given (a dry run on the ``meta`` device) or at the first forward.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from skipkit import _residual
from skipkit._checks import check_finite, check_probability
from skipkit._residual import main_output, replace_main
from skipkit.merges import Gate, Merge, resolve_merge
from skipkit.protocol import PendingShortcut as PendingShortcut
from skipkit.protocol import SkipInfo as SkipInfo
from skipkit.protocol import SkipModule as SkipModule
from skipkit.protocol import module_summary as module_summary
from skipkit.protocol import skips_disabled as skips_disabled
from skipkit.shapes import (
    Layout,
    ShapeMismatchError,
    channel_dim,
    fmt_shape,
    has_uninitialized_params,
    infer_layout,
    meta_forward,
    normalize_layout,
    resolve_layout,
)
from skipkit.shortcuts import parse_shortcut_kind, plan_shortcut

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def resolve_activation(spec: str | nn.Module | None) -> nn.Module | None:
    """``None``, an ``nn.Module``, or a name from :data:`ACTIVATIONS`."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"post/activation must be None, an nn.Module or a name from {sorted(ACTIVATIONS)}, "
            f"got {type(spec).__name__}"
        )
    if spec in ACTIVATIONS:
        return ACTIVATIONS[spec]()
    raise ValueError(
        f"unknown activation {spec!r}; use an nn.Module or one of {sorted(ACTIVATIONS)}"
    )


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): zero the whole branch for a sample with
    probability ``p`` and rescale the kept ones by ``1 / (1 - p)``.

    ``(N, *S) -> (N, *S)``; the batch is dim 0. Identity in eval mode or when ``p == 0``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = check_probability("DropPath(p)", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    return next(itertools.chain(module.parameters(), module.buffers()), None)


def _check_in_shape(in_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """``in_shape`` as a tuple of ints (batch >= 0, every other dim >= 1)."""
    if in_shape is None:
        return None
    if isinstance(in_shape, str | bytes) or not isinstance(in_shape, Sequence):
        raise TypeError(
            f"in_shape must be a sequence of ints such as (1, 64, 32, 32), got "
            f"{type(in_shape).__name__}"
        )
    if any(isinstance(d, bool) or not isinstance(d, int) for d in in_shape):
        raise TypeError(f"in_shape={tuple(in_shape)!r} must hold ints only")
    shape = tuple(int(d) for d in in_shape)
    if len(shape) < 2 or shape[0] < 0 or any(d < 1 for d in shape[1:]):
        raise ValueError(
            f"in_shape={shape} needs a batch dim >= 0 and at least one more dim, each >= 1 "
            "(e.g. (1, 64, 32, 32))"
        )
    return shape


class Residual(SkipModule):
    """A skip connection around ``body``: ``y = post(merge(shortcut(x), drop_path(body(x))))``.

    Shapes: ``(N, *S_in) -> (N, *S_out)`` where ``S_out`` is the body's output shape (or, for
    ``merge="concat"``, the body's output with the skip's channels appended).

    Args:
        body: the main path, any ``nn.Module``. RNN bodies that return ``(output, state)``
            (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) are supported: the skip joins ``output``, and
            ``Residual`` returns ``(y, state)``; it also accepts such a pair as its input (it
            uses the output and ignores the state), so residual RNN layers stack in
            ``nn.Sequential``.
        shortcut: ``"auto"``, ``"identity"``, ``"project"``, ``"pad"``, ``"avgdown"``,
            ``"resample"`` (see :mod:`skipkit.shortcuts`) or any ``nn.Module``.
        merge: a :class:`~skipkit.merges.Merge` or a string of :mod:`skipkit.merges`
            (``"add"``, ``"concat"``, ``"mul"``, ``"film"``, ``"gate"``, ``"tanh_gate"``,
            ``"rezero"``, ``"skipinit"``, ``"layerscale"``, ``"rezero_skip"``,
            ``"layerscale_skip"``, ``"weighted"``; the table there gives each formula).
        post: module applied after the merge (e.g. ``nn.ReLU()`` or ``"relu"``), or ``None``.
        drop_path: stochastic-depth probability of dropping the branch per sample.
        in_shape: an example input shape, batch dim included (any batch size, e.g.
            ``(1, 64, 32, 32)``); plans the shortcut now with a dry run on the ``meta``
            device. Without it the plan happens at the first forward: call
            :func:`skipkit.materialize` before building the optimizer.
        layout: ``"NC"`` (channels first) / ``"NLC"`` (features last) / ``"NF"``; inferred
            from the body when ``None``.
        norm: ``None``, ``"layer"`` / ``"rms"`` (``nn.LayerNorm`` / ``nn.RMSNorm`` over the
            last dim, built from the width the block sees) or an ``nn.Module``.
        norm_at: where ``norm`` goes: ``"pre"`` ``y = x + f(norm(x))`` (in the branch),
            ``"post"`` ``y = norm(x + f(x))`` (the norm is :attr:`post`), ``"sandwich"``
            ``y = x + norm_out(f(norm(x)))`` (two norms in the branch). DeepNorm is
            post-norm with a fixed skip weight: see :func:`skipkit.deepnorm`.

    Extra arguments of ``forward(x, *args, **kwargs)`` go to the body only (masks, states);
    the shortcut sees ``x``. An ``nn.MultiheadAttention`` body is self-attention:
    ``body(x, x, x, key_padding_mask=..., attn_mask=..., is_causal=...)``, returning the
    merged tensor alone (``need_weights=True`` returns ``(y, weights)``).

    Example:
        >>> block = Residual(nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128)))
        >>> block(torch.randn(2, 64, 32, 32)).shape  # shortcut: 1x1 conv stride 2 + BN
        torch.Size([2, 128, 16, 16])
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        shortcut: str | nn.Module = "auto",
        merge: str | Merge = "add",
        post: str | nn.Module | None = None,
        drop_path: float = 0.0,
        in_shape: Sequence[int] | None = None,
        layout: str | None = None,
        norm: str | nn.Module | None = None,
        norm_at: str = "pre",
    ) -> None:
        super().__init__()
        _residual.check_norm_args(norm, norm_at)
        if norm_at == "post" and norm is not None and post is not None:
            raise ValueError(
                "Residual(norm=..., norm_at='post', post=...): the post-norm is the block's "
                "post part; pass post=None, or post=nn.Sequential(norm, activation)"
            )
        if not isinstance(body, nn.Module):
            raise TypeError(f"Residual body must be an nn.Module, got {type(body).__name__}")
        if not isinstance(shortcut, nn.Module):
            shortcut = parse_shortcut_kind(shortcut, owner="Residual(shortcut) (or an nn.Module)")
        rate = check_probability("Residual(drop_path)", drop_path)
        shape = _check_in_shape(in_shape)
        self.body = body
        self.merge = resolve_merge(merge)
        self.post = resolve_activation(post)
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        # A body without tensors has no dtype of its own: the parts follow the input's.
        self._follow_input_dtype = _first_tensor(body) is None
        self.layout: Layout | None = normalize_layout(layout) or infer_layout(body)
        self.shortcut_kind = "module" if isinstance(shortcut, nn.Module) else str(shortcut)
        self.norm_at = norm_at
        if isinstance(norm, str) and self.layout == "NC":
            raise ValueError(
                f"Residual(norm={norm!r}) normalizes the last dim of (N, *, D) inputs, but "
                f"this {type(body).__name__} body is channels-first; pass a norm module "
                "instead, e.g. norm=nn.GroupNorm(1, C)"
            )
        width_in, width_out = _residual.body_widths(body)
        ref = _first_tensor(body)
        self.norm: nn.Module | None = None
        self.norm_out: nn.Module | None = None
        if norm is not None and norm_at == "post":
            self.post = _residual.norm_or_pending(norm, width_out, ref=ref)
        elif norm is not None:
            self.norm = _residual.norm_or_pending(norm, width_in, ref=ref)
            if norm_at == "sandwich":
                self.norm_out = _residual.norm_or_pending(norm, width_out, ref=ref)
        # A shortcut given by name is planned from the shapes; until then a placeholder.
        self.shortcut: nn.Module = (
            shortcut if isinstance(shortcut, nn.Module) else PendingShortcut(str(shortcut))
        )
        self._built = False
        if shape is not None:
            self._plan_from_in_shape(shape)

    @property
    def ready(self) -> bool:
        return self._built and not self._pending_norms()

    def _where(self) -> str:
        return self.path or f"Residual({type(self.body).__name__})"

    def _pending_norms(self) -> list[str]:
        return [
            name
            for name in ("norm", "norm_out", "post")
            if isinstance(getattr(self, name), _residual.PendingNorm)
        ]

    def _build_norms(self, width_in: int, width_out: int, ref: torch.Tensor | None) -> None:
        """Replace each pending ``"layer"``/``"rms"`` norm by the module of its width."""
        for name in self._pending_norms():
            pending = getattr(self, name)
            width = width_in if name == "norm" else width_out
            setattr(self, name, _residual.norm_or_pending(pending.kind, width, ref=ref))
            getattr(self, name).train(self.training)

    def _call_body(self, h: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.body, nn.MultiheadAttention):
            if args:
                raise TypeError(
                    f"{self._where()}: a self-attention body takes its masks by keyword "
                    "(key_padding_mask=, attn_mask=, is_causal=), not positionally"
                )
            return _residual.self_attention(self.body, h, **kwargs)
        return self.body(h, *args, **kwargs)

    def _plan_from_in_shape(self, in_shape: tuple[int, ...]) -> None:
        if has_uninitialized_params(self.body):
            log.debug("%s: lazy body; planning the shortcut at the first forward", self._where())
            return
        body = (
            _residual.SelfAttention(self.body)
            if isinstance(self.body, nn.MultiheadAttention)
            else self.body
        )
        ref = _first_tensor(self.body)
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        try:
            out = meta_forward(body, torch.empty(in_shape, device="meta", dtype=dtype))
        except NotImplementedError:
            log.debug("%s: no meta kernel; planning at the first forward", self._where())
            return
        except (RuntimeError, ValueError, IndexError) as e:
            raise ShapeMismatchError(
                f"the body cannot take in_shape {fmt_shape(in_shape)}: {e}",
                path=self._where(),
                fixes=["pass the shape of a real input, batch dim included"],
            ) from e
        branch = main_output(out)
        self._build_norms(in_shape[-1], branch.shape[-1], ref)
        self._build(
            in_shape,
            tuple(branch.shape),
            device=ref.device if ref is not None else None,
            dtype=ref.dtype if ref is not None and ref.is_floating_point() else None,
        )

    def _build(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        *,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ) -> None:
        where = self._where()
        self.merge.path = where
        if isinstance(self.shortcut, PendingShortcut):
            shortcut = plan_shortcut(
                in_shape,
                out_shape,
                kind=self.shortcut_kind,
                layout=self.layout,
                match_channels=self.merge.match_channels,
                path=where,
            )
            self.shortcut = shortcut.to(device=device, dtype=dtype)
            skip_shape = _planned_shape(in_shape, out_shape, self.layout, self.merge)
        else:
            skip_shape = self._custom_shortcut_shape(in_shape, out_shape)
            if not self.skip_enabled and self.merge.match_channels:
                # a plain twin never joins its skip: the branch alone sizes the merge (a
                # skip that would not fit is still refused by the merge if it is switched on)
                skip_shape = out_shape
        self.merge.setup(skip_shape, out_shape, self.layout, device=device, dtype=dtype)
        # Parts created now must follow the block's mode (e.g. eval inside materialize()).
        self.shortcut.train(self.training)
        self.merge.train(self.training)
        self._built = True
        log.debug(
            "%s: shortcut %s for %s -> %s",
            where,
            self.shortcut,
            fmt_shape(in_shape),
            fmt_shape(out_shape),
        )

    def _follow_dtype(self, dtype: torch.dtype) -> None:
        """Cast planned parts to the input's dtype (a parameter-free body has none)."""
        ref = _first_tensor(self.shortcut)
        ref = ref if ref is not None else _first_tensor(self.merge)
        if ref is not None and ref.is_floating_point() and ref.dtype != dtype:
            self.shortcut.to(dtype=dtype)
            self.merge.to(dtype=dtype)

    def _custom_shortcut_shape(
        self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> tuple[int, ...]:
        try:
            skip = meta_forward(self.shortcut, torch.empty(in_shape, device="meta"))
        except NotImplementedError:
            return out_shape
        except (RuntimeError, ValueError, IndexError) as e:
            raise ShapeMismatchError(
                f"the shortcut module cannot take the input {fmt_shape(in_shape)}: {e}",
                path=self._where(),
                branch_shape=out_shape,
                fixes=["give a shortcut module that maps the input to the branch's shape"],
            ) from e
        assert isinstance(skip, torch.Tensor)
        return tuple(skip.shape)

    def branch(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``drop_path(norm_out(body(norm(x), *args, **kwargs)))`` (each norm only where
        ``norm_at`` puts it); the shortcut sees ``x`` only. Plans the shortcut, the merge and
        any pending norm from the shapes on the first call."""
        if isinstance(self.norm, _residual.PendingNorm):
            self._build_norms(x.shape[-1], x.shape[-1], x)
        out = self._call_body(x if self.norm is None else self.norm(x), *args, **kwargs)
        b = main_output(out)
        if self._pending_norms():
            self._build_norms(x.shape[-1], b.shape[-1], b)
        if self._follow_input_dtype and self._built and x.is_floating_point():
            self._follow_dtype(x.dtype)
        if not self._built:
            self._build(
                tuple(x.shape),
                tuple(b.shape),
                device=b.device,
                dtype=b.dtype if b.is_floating_point() else None,
            )
        y = b if self.norm_out is None else self.norm_out(b)
        y = self.drop_path(y)
        return y if out is b else replace_main(out, y)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if not self._built and any(
            k.startswith((prefix + "shortcut.", prefix + "merge.")) for k in state_dict
        ):
            raise ValueError(
                f"{self._where()}: this skip has not seen its shapes yet, so its shortcut and "
                "merge have no parameters to load into. Call skipkit.materialize(model, "
                "example_input) (or pass in_shape=...) before load_state_dict"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"layout={self.layout}, shortcut={self.shortcut_kind!r}, built={self._built}"


def _planned_shape(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], layout: Layout | None, merge: Merge
) -> tuple[int, ...]:
    """The skip's shape after a planned shortcut: the branch's, keeping the input's channels
    when the merge concatenates."""
    if merge.match_channels:
        return out_shape
    lay = resolve_layout(layout, len(out_shape))
    d = channel_dim(lay, len(out_shape))
    return (*out_shape[:d], in_shape[d], *out_shape[d + 1 :])


def plain_residual(
    body: nn.Module,
    *,
    merge: str | Merge = "add",
    post: str | nn.Module | None = None,
    in_shape: Sequence[int] | None = None,
    layout: str | None = None,
) -> Residual:
    """The plain twin of ``Residual(body, merge=merge, post=post)`` for ``skip=False`` builders.

    The same block (``body`` under the same name, the same merge) with the skip off for good
    and no shortcut weights: ``y = post(merge.without_skip(body(x)))``. Loading the residual
    block's ``state_dict`` with ``strict=False`` copies every weight it uses, and the result
    equals the residual block under :func:`skips_disabled`. Shapes as :class:`Residual`.
    """
    block = Residual(body, shortcut=nn.Identity(), merge=merge, post=post, layout=layout)
    block.skip_enabled = False
    if in_shape is not None:
        block._plan_from_in_shape(tuple(int(s) for s in in_shape))
    return block


class Highway(Residual):
    """Highway block (Srivastava et al. 2015): ``y = H(x)*T(x) + x*(1 - T(x))``.

    ``T(x) = sigmoid(W_T x + b_T)`` with ``b_T = gate_bias`` at init (negative: carry the
    input first). Shapes as :class:`Residual` with ``merge="gate"``; other keywords are passed
    on to it.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        gate_bias: float = -2.0,
        shortcut: str | nn.Module = "auto",
        post: str | nn.Module | None = None,
        in_shape: Sequence[int] | None = None,
        layout: str | None = None,
    ) -> None:
        super().__init__(
            body,
            shortcut=shortcut,
            merge=Gate(check_finite("Highway(gate_bias)", gate_bias)),
            post=post,
            in_shape=in_shape,
            layout=layout,
        )


def materialize(model: nn.Module, example: Any, **kwargs: Any) -> nn.Module:
    """Create every lazily-planned skip part of ``model`` by running one forward pass.

    Call it after building the model and before building the optimizer (lazy shortcuts and
    merges only get parameters once they have seen a shape). The pass runs without autograd
    and in eval mode, so BatchNorm running statistics are not touched; training flags are
    restored afterwards. Also records each skip's module path, so shape errors name it.

    Args:
        model: any module containing skipkit skips.
        example: an input (a tensor, or a tuple of positional arguments).
        **kwargs: keyword arguments for ``model.forward``.

    Returns:
        ``model`` itself.
    """
    for name, m in model.named_modules():
        if isinstance(m, SkipModule):
            m.path = name or type(model).__name__
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            args = example if isinstance(example, tuple) else (example,)
            model(*args, **kwargs)
    finally:
        for m, training in modes:
            m.training = training
    lazy = [name for name, m in model.named_modules() if isinstance(m, SkipModule) and not m.ready]
    if lazy:
        log.warning("skips not reached by the example input stay lazy: %s", ", ".join(lazy))
    return model
