"""Adapters for added skips: the shortcut that makes ``src``'s output fit ``dst``'s, and the
zero initialisation that makes the new skip start as a no-op.

An added skip computes ``y = merge(adapter(s), b)`` where ``s`` is the output of ``src`` and
``b`` the output of ``dst``. ``y`` must have ``b``'s shape (the layers after ``dst`` expect
it), and with ``zero_init=True`` it must equal ``b`` exactly at step 0 (ControlNet's zero
convolutions). What starts at zero, per merge:

=============  ==========================================  ================================
merge          formula                                     zero at step 0
=============  ==========================================  ================================
``add``        ``b + P(s)``                                 last layer of ``P`` (1×1 conv /
                                                            Linear weight and bias, the BN
                                                            after a conv, or an appended
                                                            per-channel :class:`ZeroGain`)
``concat``     ``R(cat([b, P(s)]))`` back to ``b``'s width  ``R = [I | 0]``: identity on
                                                            ``b``, zero on the skip
``mul``        ``b * (1 + P(s))`` (FiLM-style)              last layer of ``P``
``gate``       ``b + tanh(W P(s) + c) * P(s)``              the gate ``W, c`` (the skip
                                                            itself stays live, so the gate
                                                            gets a gradient)
``rezero``     ``b + α P(s)``, one scalar ``α``             ``α``
``layerscale`` ``b + γ_c P(s)``, one ``γ`` per channel      ``γ``
``weighted``   ``a P(s) + w b``                             ``a`` (``w`` starts at 1)
=============  ==========================================  ================================

With ``zero_init=False`` the strings mean the core merges of :mod:`skipkit.merges`
(``mul`` is ``P(s) * b``, ``gate`` the Highway gate), ``concat`` is still reduced back to
``b``'s width, and every adapter keeps its default (random) initialisation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from skipkit.merges import (
    Add,
    Concat,
    Gate,
    Merge,
    Mul,
    Scale,
    WeightedSum,
    channel_transform,
    resolve_merge,
)
from skipkit.shapes import Layout, ShapeMismatchError, channel_dim, fmt_shape, resolve_layout
from skipkit.shortcuts import parse_shortcut_kind, plan_shortcut

Shape = tuple[int, ...]

# Core merges whose zero-init form is reached through a string.
_STRING_FORM: dict[type[Merge], str] = {
    Gate: "'gate'",
    Mul: "'mul'",
    Scale: "'rezero' or 'layerscale'",
    WeightedSum: "'weighted'",
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


class Modulate(Merge):
    """FiLM-style multiplicative merge: ``y = b * (1 + s)``; shapes ``(N, *S), (N, *S)``.

    Equals ``b`` while the skip is zero, so it can start as the identity (``merge="mul"`` with
    ``zero_init=True``); without the skip: ``b``.
    """

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return branch * (1.0 + skip)


class TanhGate(Merge):
    """A gate that starts closed: ``y = b + tanh(W s + c) * s``; shapes ``(N, *S), (N, *S)``.

    ``W`` (1×1 conv or ``nn.Linear`` on the channel dim) and ``c`` start at zero, so
    ``y = b`` at step 0, as in Flamingo's tanh-gated cross-attention, but the gate depends on
    the skip per position like a Highway gate. ``dL/dc = g * s`` is not zero, so it opens as
    it learns. Without the skip: ``b``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.transform: nn.Module | None = None

    @property
    def ready(self) -> bool:
        return self.transform is not None

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check(tuple(skip_shape), tuple(branch_shape))
        if self.transform is None:
            self.transform = channel_transform(
                branch_shape, layout, bias=0.0, zero_weight=True, device=device, dtype=dtype
            )

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        assert self.transform is not None, "TanhGate used before setup()"
        return branch + torch.tanh(self.transform(skip)) * skip


class ProjectedConcat(Concat):
    """Surgery's ``concat``: ``R(cat([b, s]))`` back to ``b``'s width (a 1×1 conv or Linear
    ``R``). Without the skip: ``b``, the model the skip was added to (the core
    :class:`~skipkit.Concat` would give ``R(cat([b, 0]))``)."""

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
    if spec == "concat":
        return ProjectedConcat(out_channels=dst_channels)
    if isinstance(spec, str) and zero_init:
        table: dict[str, type[Merge]] = {"mul": Modulate, "gate": TanhGate}
        if spec in table:
            return table[spec]()
        if spec == "weighted":
            return ZeroStartWeightedSum()
    if spec in ("rezero", "skipinit", "layerscale"):
        # These scale the *new* path (the skip); the gain lives on the adapter.
        return Add()
    return resolve_merge(spec)


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
    spec: str | Merge,
    zero_init: bool,
    skip_shape: Shape,
    layout: Layout | None,
    custom_shortcut: bool,
) -> nn.Module:
    """Append gains and zero the parts that must start at zero; returns the new adapter."""
    ndim = len(skip_shape)
    lay = resolve_layout(layout, ndim)
    d = channel_dim(lay, ndim)
    if spec in ("rezero", "skipinit"):
        return nn.Sequential(adapter, ZeroGain(None, ndim=ndim))
    if spec == "layerscale":
        init = 0.0 if zero_init else 1e-5
        return nn.Sequential(adapter, ZeroGain(skip_shape[d], dim=d, ndim=ndim, init=init))
    if not zero_init:
        return adapter
    if isinstance(merge, Concat) and merge.reduce is not None:
        _identity_on_branch(merge.reduce, branch_channels=merge.out_channels or 0)
        return adapter
    if isinstance(merge, Add | Modulate):  # strings and instances alike
        gain = ZeroGain(skip_shape[d], dim=d, ndim=ndim)
        if custom_shortcut:  # the user's module keeps its weights; a gain follows it
            return nn.Sequential(adapter, gain)
        return _zero_last(adapter, gain)
    return adapter


def _identity_on_branch(reduce: nn.Module, *, branch_channels: int) -> None:
    """``R = [I | 0]``: the reduction passes the branch through and ignores the skip."""
    weight = reduce.weight
    assert isinstance(weight, torch.Tensor)
    with torch.no_grad():
        weight.zero_()
        eye = torch.eye(branch_channels, dtype=weight.dtype, device=weight.device)
        weight[:, :branch_channels] = eye.view(*eye.shape, *(1,) * (weight.ndim - 2))
        if isinstance(reduce.bias, torch.Tensor):
            reduce.bias.zero_()


def merge_label(spec: str | Merge, merge: Merge) -> str:
    """How :func:`skipkit.list_skips` names the merge: the string given, or the class."""
    return spec if isinstance(spec, str) else type(merge).__name__


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
            twin = _STRING_FORM.get(type(merge))
            use = (
                f"pass merge={twin} (its zero-init form) instead of a {type(merge).__name__} module"
                if twin
                else "use a merge string ('add', 'concat', 'mul', 'gate', 'rezero', "
                "'layerscale', 'weighted'), whose adapters start at zero"
            )
            raise ValueError(
                f"{label}: with zero_init=True the new skip must leave dst's output unchanged "
                f"at step 0, but merge {type(merge).__name__} changes it by up to {err:.3g}. "
                f"Fix: {use}; or pass zero_init=False"
            )


__all__ = [
    "Modulate",
    "ProjectedConcat",
    "TanhGate",
    "ToMap",
    "ZeroGain",
    "ZeroStartWeightedSum",
    "check_join",
    "merge_label",
    "plan_adapter",
    "resolve_surgery_merge",
    "skip_shape_after",
    "zero_initialise",
]
