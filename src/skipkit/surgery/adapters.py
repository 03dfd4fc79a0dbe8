"""Adapters for added skips: the shortcut that makes ``src``'s output fit ``dst``'s, and the
zero initialisation that makes the new skip start as a no-op.

An added skip computes ``y = merge(P(x_src), b)``: the skip ``s = P(x_src)`` is the adapter
``P`` on the output of ``src``, ``b`` the output of ``dst``. ``y`` must have ``b``'s shape
(the layers after ``dst`` expect it). A merge string means the formula of
:mod:`skipkit.merges` here too, with or without ``zero_init``; only ``concat`` is always
reduced back to ``b``'s width. With ``zero_init=True`` ``y`` equals ``b`` exactly at step 0
(ControlNet's zero convolutions); what starts at zero, per merge:

===================  =============================  ===========================================
merge                formula                        zero at step 0 (``zero_init=True``)
===================  =============================  ===========================================
``add``              ``s + b``                      last layer of ``P`` (1×1 conv / Linear
                                                    weight and bias, the BN after a conv, or
                                                    an appended per-channel :class:`ZeroGain`)
``film``             ``b * (1 + s)``                last layer of ``P``, as for ``add``
``concat``           ``R(cat([b, s], C))``          ``R = [I | 0]``: identity on ``b``, zero
                                                    on the skip
``tanh_gate``        ``b + tanh(W s + c) * s``      the gate ``W, c`` (the skip stays live, so
                                                    the gate gets a gradient)
``rezero_skip``      ``b + α*s``, one scalar        ``α`` (the skip stays live)
``layerscale_skip``  ``b + γ_c*s``, per channel     ``γ`` (from 1e-5 without ``zero_init``)
``weighted``         ``a*s + w*b``                  ``a`` (``w`` starts at 1)
===================  =============================  ===========================================

``mul`` (``s * b``), ``gate`` (Highway), ``rezero`` / ``skipinit`` (``s + α*b``) and
``layerscale`` (``s + γ_c*b``) cannot start as ``b``: with ``zero_init=True`` they raise a
``ValueError`` that names the merge that can (``film``, ``tanh_gate``, ``rezero_skip``,
``layerscale_skip``). With ``zero_init=False`` every merge is accepted, and ``P`` and the
merge keep their default initialisation. A :class:`~skipkit.Merge` instance follows the same
rules (its :attr:`~skipkit.Merge.starts_as_branch`); one defined outside skipkit is checked
after the join.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from skipkit.merges import MERGES, Concat, Film, Merge, WeightedSum, resolve_merge
from skipkit.shapes import Layout, ShapeMismatchError, channel_dim, fmt_shape, resolve_layout
from skipkit.shortcuts import parse_shortcut_kind, plan_shortcut

Shape = tuple[int, ...]

# For each merge that cannot start as b: why not, and the merge that can.
_NO_ZERO_START: dict[str, tuple[str, str]] = {
    "mul": ("it is 0 wherever the skip is 0", "film"),
    "gate": ("T = sigmoid(W s + c) never reaches 1, so part of s always passes", "tanh_gate"),
    "rezero": ("with α = 0 it gives the skip s, not b", "rezero_skip"),
    "skipinit": ("with α = 0 it gives the skip s, not b", "rezero_skip"),
    "layerscale": ("with γ = 0 it gives the skip s, not b", "layerscale_skip"),
}
_GLOBAL_POOL: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}


class ZeroGain(nn.Module):
    """A learnable gain on the skip path: ``x * γ``; ``γ`` is one scalar or one per channel.

    Shapes: ``(N, C, *S) -> (N, C, *S)`` (or ``(N, ..., C)`` with ``dim=-1``). Starts at
    ``init`` (0: the skip contributes nothing at step 0 but ``dL/dγ = Σ g·x`` is not zero, so
    it learns).
    """

    def __init__(
        self, channels: int | None, *, dim: int = 1, ndim: int = 2, init: float = 0.0
    ) -> None:
        super().__init__()
        size = () if channels is None else (channels,)
        self.gain = nn.Parameter(torch.full(size, float(init)))
        d = dim % ndim
        self._view = tuple(channels if i == d and channels else 1 for i in range(ndim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(self._view)

    def extra_repr(self) -> str:
        return f"channels={tuple(self.gain.shape)}"


# The name this merge had in skipkit.surgery before it became the core "film" merge.
Modulate = Film


class ProjectedConcat(Concat):
    """Surgery's ``concat``: ``R(cat([b, s], C))`` back to ``b``'s width (a 1×1 conv or Linear
    ``R``), the formula of ``Concat(out_channels=...)``. Without the skip: ``b``, the model the
    skip was added to (the core :class:`~skipkit.Concat` would give ``R(cat([b, 0]))``)."""

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return branch


class ZeroStartWeightedSum(WeightedSum):
    """Surgery's zero-initialised ``weighted``: ``a*s + w*b`` from ``a = 0, w = 1``. Without
    the skip: ``b``, the model the skip was added to (not ``w*b``)."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return branch


class ToMap(nn.Module):
    """A vector onto a feature map: ``(N, F) -> Linear -> (N, C, 1, …) -> (N, C, *S)``.

    The broadcast bias of diffusion U-Nets' time embeddings: the same projected vector at
    every position.
    """

    def __init__(self, in_features: int, out_shape: Sequence[int]) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, int(out_shape[1]))
        self.spatial = tuple(int(s) for s in out_shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # (N, C)
        y = y.view(*y.shape, *(1,) * len(self.spatial))  # (N, C, 1, ...)
        return y.expand(-1, -1, *self.spatial)  # (N, C, *S)

    def extra_repr(self) -> str:
        return f"spatial={self.spatial}"


def resolve_surgery_merge(spec: str | Merge, *, zero_init: bool, dst_channels: int) -> Merge:
    """The merge for an added skip (see the module table). A :class:`Merge` instance is
    copied, so the caller's module is never shared between skips."""
    if isinstance(spec, Merge):
        return copy.deepcopy(spec)
    if spec == "concat":  # the layers after dst expect its width
        return ProjectedConcat(out_channels=dst_channels)
    if spec == "weighted" and zero_init:
        return ZeroStartWeightedSum()
    return resolve_merge(spec)


def check_zero_start(merge: Merge, *, zero_init: bool, label: str) -> None:
    """With ``zero_init``, a merge that can never give ``b`` alone is refused up front.

    Raises:
        ValueError: naming the merge, why it cannot start as ``b``, and the merge that can.
    """
    if not zero_init or merge.starts_as_branch != "never":
        return
    why, instead = _NO_ZERO_START.get(merge.name, ("it has no parameters that give b", "add"))
    raise ValueError(
        f"{label}: with zero_init=True the new skip must start as dst's output b, but merge "
        f"{merge.name!r} ({merge.formula}) cannot: {why}. Fix: merge={instead!r} "
        f"({resolve_merge(instead).formula}), which starts as b; or zero_init=False to keep "
        f"{merge.name!r} with its default initialisation"
    )


def _ends_with(module: nn.Module) -> nn.Module:
    while isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module


def _zero_last(shortcut: nn.Module, gain: ZeroGain) -> nn.Module:
    """Make ``shortcut``'s output zero at step 0 while its last parameters still learn."""
    last = _ends_with(shortcut)
    if isinstance(last, ToMap):
        last = last.linear
    if isinstance(last, nn.modules.batchnorm._BatchNorm) and last.affine:
        # timm's zero_init_last: γ = β = 0 gives exactly 0 in train and eval mode.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return shortcut
    if isinstance(last, nn.Linear | nn.modules.conv._ConvNd):
        # ControlNet's zero convolution: dL/dW = g·xᵀ is not zero, so W learns.
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        return shortcut
    return nn.Sequential(shortcut, gain) if not isinstance(shortcut, nn.Identity) else gain


def plan_adapter(
    skip_shape: Shape,
    dst_shape: Shape,
    *,
    kind: str | nn.Module,
    merge: Merge,
    layout: Layout | None,
    src_layout: Layout | None = None,
    label: str,
) -> nn.Module:
    """The shortcut from ``src``'s output shape to what ``merge`` needs at ``dst``.

    On top of :func:`skipkit.plan_shortcut`: feature maps into vectors (global average pool,
    then Linear), vectors into feature maps (:class:`ToMap`), and surgery wording in errors.
    ``layout`` is the pair's (dst's, when known); ``src_layout`` tells whether a rank-3+ src
    is a feature map (``"NC"``) when it goes into a vector.

    Raises:
        ShapeMismatchError: no shortcut makes the shapes fit.
    """
    if isinstance(kind, nn.Module):
        return copy.deepcopy(kind)
    kind = parse_shortcut_kind(kind, owner="shortcut (or an nn.Module)")
    custom = (
        f"pass shortcut=<an nn.Module mapping {fmt_shape(skip_shape)} to {fmt_shape(dst_shape)}>"
    )
    if skip_shape[0] != dst_shape[0]:
        raise ShapeMismatchError(
            f"src and dst see different batch sizes ({skip_shape[0]} vs {dst_shape[0]})",
            path=label,
            skip_shape=skip_shape,
            branch_shape=dst_shape,
            fixes=["choose a src and dst that both keep the batch dim first", custom],
        )
    lay = resolve_layout(layout, len(skip_shape))
    src_lay = resolve_layout(src_layout or layout, len(skip_shape))
    if len(skip_shape) > 2 and len(dst_shape) == 2 and src_lay == "NC" and kind == "auto":
        c = skip_shape[1]
        pool = [_GLOBAL_POOL[len(skip_shape) - 2](1), nn.Flatten(1)]
        if not merge.match_channels:
            return nn.Sequential(*pool)
        return nn.Sequential(*pool, nn.Linear(c, dst_shape[1]))
    if len(skip_shape) == 2 and len(dst_shape) > 2 and kind == "auto" and merge.match_channels:
        return ToMap(skip_shape[1], dst_shape)
    if len(skip_shape) != len(dst_shape):
        raise ShapeMismatchError(
            f"src gives a {len(skip_shape)}-D tensor and dst a {len(dst_shape)}-D one; the "
            "automatic shortcut maps feature maps to maps or vectors, and vectors to either",
            path=label,
            skip_shape=skip_shape,
            branch_shape=dst_shape,
            fixes=["choose a src whose output has dst's rank", custom],
        )
    try:
        return plan_shortcut(
            skip_shape,
            dst_shape,
            kind=kind,
            layout=layout,
            match_channels=merge.match_channels,
            path=label,
        )
    except ShapeMismatchError as e:
        if lay == "NLC" and skip_shape[1:-1] != dst_shape[1:-1]:
            raise ShapeMismatchError(
                f"src and dst have different sequence lengths {fmt_shape(skip_shape[1:-1])} vs "
                f"{fmt_shape(dst_shape[1:-1])}; a features-last shortcut maps only the last dim",
                path=label,
                skip_shape=skip_shape,
                branch_shape=dst_shape,
                fixes=["pass layout='NC' if dim 1 holds channels", custom],
            ) from e
        raise


def skip_shape_after(adapter: nn.Module, src_out: torch.Tensor) -> Shape:
    """Run the adapter once (no grad) to learn the shape it gives ``merge``."""
    with torch.no_grad():
        return tuple(adapter(src_out).shape)


def zero_initialise(
    adapter: nn.Module,
    merge: Merge,
    *,
    zero_init: bool,
    skip_shape: Shape,
    layout: Layout | None,
    custom_shortcut: bool,
) -> nn.Module:
    """With ``zero_init``, zero what the module table says (after ``merge.setup``); returns the
    adapter (with a :class:`ZeroGain` appended where its last layer cannot be zeroed)."""
    if not zero_init:
        return adapter
    if merge.starts_as_branch == "by_own_parameters":
        merge.start_as_branch()
        return adapter
    if merge.starts_as_branch == "if_skip_is_zero":
        ndim = len(skip_shape)
        d = channel_dim(resolve_layout(layout, ndim), ndim)
        gain = ZeroGain(skip_shape[d], dim=d, ndim=ndim)
        if custom_shortcut:  # the user's module keeps its weights; a gain follows it
            return nn.Sequential(adapter, gain)
        return _zero_last(adapter, gain)
    return adapter  # a merge defined elsewhere: check_join tells whether it starts as b


def check_join(
    out: torch.Tensor, dst_out: torch.Tensor, *, zero_init: bool, merge: Merge, label: str
) -> None:
    """The joined output must keep ``dst``'s shape, and equal it at step 0 when zero-init."""
    if out.shape != dst_out.shape:
        raise ShapeMismatchError(
            f"merge {type(merge).__name__} changes dst's output shape, and the layers after "
            "dst expect the original",
            path=label,
            skip_shape=tuple(out.shape),
            branch_shape=tuple(dst_out.shape),
            fixes=[
                "use a merge that keeps the branch's shape ('add', 'concat', 'gate', ...)",
                "give Concat(out_channels=...) dst's channel count",
            ],
        )
    if zero_init:
        err = (out - dst_out).abs().max().item() if out.numel() else 0.0
        scale = 1.0 + (dst_out.abs().max().item() if dst_out.numel() else 0.0)
        if not err <= 1e-6 * scale:
            can = [n for n in sorted(MERGES) if resolve_merge(n).starts_as_branch != "never"]
            raise ValueError(
                f"{label}: with zero_init=True the new skip must leave dst's output unchanged "
                f"at step 0, but merge {merge.name} ({merge.formula}) changes it by up to "
                f"{err:.3g}. Fix: use a merge that starts as b ({', '.join(map(repr, can))}), "
                "or give yours a starts_as_branch (see skipkit.Merge); or pass zero_init=False"
            )


__all__ = [
    "Modulate",
    "ProjectedConcat",
    "ToMap",
    "ZeroGain",
    "ZeroStartWeightedSum",
    "check_join",
    "check_zero_start",
    "plan_adapter",
    "resolve_surgery_merge",
    "skip_shape_after",
    "zero_initialise",
]
