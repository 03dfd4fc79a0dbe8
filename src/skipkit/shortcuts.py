"""Shortcuts: what makes the skipped signal fit the branch.

``plan_shortcut(in_shape, out_shape)`` picks the cheapest correct module:

==============  ==============================================================================
kind            what it builds
==============  ==============================================================================
``identity``    nothing; the shapes must already fit
``project``     1×1 conv (stride matching a downsampled size, then BatchNorm) or ``nn.Linear``
``pad``         He et al. option A: strided subsampling + zero channels, no parameters
``avgdown``     ResNet-D: average pool (ceil mode), then 1×1 conv + BatchNorm
``resample``    interpolation to the branch's spatial size (+ 1×1 conv when channels differ)
``auto``        identity if equal; upsampling → resample; else project (cropping for valid
                convolutions whose size no stride reproduces)
==============  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from skipkit.shapes import Layout, ShapeMismatchError, channel_dim, fmt_shape, resolve_layout

ShortcutKind = Literal["auto", "identity", "project", "pad", "avgdown", "resample"]
SHORTCUT_KINDS: tuple[str, ...] = ("auto", "identity", "project", "pad", "avgdown", "resample")
#: He et al.'s options and ResNet-D's letter, accepted (any case) for the core kinds.
SHORTCUT_ALIASES: dict[str, str] = {"a": "pad", "b": "project", "d": "avgdown"}
_KIND_HELP = {
    "auto": "whatever fits",
    "identity": "no change",
    "project": "1x1 conv + BN / Linear, alias 'B'",
    "pad": "subsample + zero channels, alias 'A'",
    "avgdown": "average pool, then 1x1 conv + BN (ResNet-D), alias 'D'",
    "resample": "interpolate",
}


def parse_shortcut_kind(
    spec: object, *, allowed: Sequence[str] = SHORTCUT_KINDS, owner: str = "shortcut"
) -> str:
    """The core kind for a shortcut name or alias (``"B"`` -> ``"project"``; the one place the
    aliases are parsed). ``allowed`` narrows the kinds (a model's options); ``owner`` names the
    argument in the error."""
    if not isinstance(spec, str):
        raise TypeError(f"{owner} must be a string, got {type(spec).__name__} {spec!r}")
    kind = SHORTCUT_ALIASES.get(spec.lower(), spec.lower())
    if kind not in allowed:
        options = ", ".join(f"{k!r} ({_KIND_HELP[k]})" for k in allowed)
        raise ValueError(f"unknown shortcut {spec!r} for {owner}; use {options}")
    return kind


NormLayer = Callable[[int], nn.Module]

_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_AVG: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def pointwise(
    in_channels: int,
    out_channels: int,
    *,
    ndim: int,
    layout: Layout,
    stride: int | tuple[int, ...] = 1,
    bias: bool = True,
) -> nn.Module:
    """A 1×1 conv (channels first, rank 3 to 5) or ``nn.Linear`` (features last / vectors).

    ``(N, C_in, *S) -> (N, C_out, *ceil(S / stride))`` or ``(N, ..., C_in) -> (N, ..., C_out)``.
    """
    if layout == "NC" and ndim > 2:
        spatial = ndim - 2
        if spatial not in _CONV:
            raise ValueError(f"channels-first tensors of rank {ndim} are not supported (3 to 5)")
        return _CONV[spatial](in_channels, out_channels, 1, stride=stride, bias=bias)
    return nn.Linear(in_channels, out_channels, bias=bias)


class ZeroPad(nn.Module):
    """He et al. option A: subsample by ``stride``, then append zero channels.

    ``(N, C_in, *S) -> (N, C_out, *ceil(S / stride))`` (or features last: the last dim grows).
    No parameters, so it adds no capacity and costs almost nothing.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: Sequence[int] = (), dim: int = 1
    ) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"ZeroPad cannot shrink channels {in_channels} -> {out_channels}; "
                "use shortcut='project'"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = tuple(int(s) for s in stride)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s > 1 for s in self.stride):
            index = [slice(None)] * x.ndim
            for i, s in enumerate(self.stride):
                index[2 + i] = slice(None, None, s)
            x = x[tuple(index)]
        extra = self.out_channels - self.in_channels
        if extra == 0:
            return x
        pad_shape = list(x.shape)
        pad_shape[self.dim] = extra
        return torch.cat([x, x.new_zeros(pad_shape)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, stride={self.stride}"


class CenterCrop(nn.Module):
    """Crop the spatial dims of ``(N, C, *S)`` to ``size`` around the centre (U-Net style)."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index: list[slice] = [slice(None), slice(None)]
        for have, want in zip(x.shape[2:], self.size, strict=True):
            start = (have - want) // 2
            index.append(slice(start, start + want))
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Resample(nn.Module):
    """Interpolate ``(N, C, *S)`` to ``(N, C, *size)`` (or by an integer ``scale_factor``)."""

    def __init__(
        self,
        size: Sequence[int] | None = None,
        *,
        scale_factor: Sequence[float] | None = None,
        mode: str = "nearest",
    ) -> None:
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("Resample takes exactly one of size and scale_factor")
        self.size = tuple(int(s) for s in size) if size is not None else None
        self.scale_factor = tuple(float(s) for s in scale_factor) if scale_factor else None
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor, mode=self.mode)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


def default_norm(spatial_dims: int) -> NormLayer:
    """BatchNorm of the right rank (torchvision's ``downsample`` uses conv + BN)."""
    return _BN[spatial_dims]


def _spatial_plan(s_in: Sequence[int], s_out: Sequence[int]) -> list[tuple[str, int]]:
    """Per spatial dim: ("same", 1), ("stride", s), ("crop", out) or ("up", out)."""
    plan: list[tuple[str, int]] = []
    for a, b in zip(s_in, s_out, strict=True):
        if a == b:
            plan.append(("same", 1))
        elif b > a:
            plan.append(("up", b))
        else:
            # A stride-s conv with 'same'-style padding gives ceil(a / s); odd sizes included.
            stride = next((s for s in range(2, a + 1) if -(-a // s) == b), None)
            plan.append(("stride", stride) if stride is not None else ("crop", b))
    return plan


def plan_shortcut(
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    *,
    kind: str = "auto",
    layout: Layout | None = None,
    match_channels: bool = True,
    norm_layer: NormLayer | Literal["default"] | None = "default",
    path: str | None = None,
) -> nn.Module:
    """Build the shortcut that maps a tensor shaped ``in_shape`` to fit ``out_shape``.

    Args:
        in_shape: the skipped signal, e.g. ``(N, C, H, W)``.
        out_shape: the branch output it must join, e.g. ``(N, C', H', W')``.
        kind: one of :data:`SHORTCUT_KINDS`.
        layout: ``"NC"``, ``"NLC"`` or ``"NF"``; ``None`` means channels first for rank > 2.
        match_channels: ``False`` for concatenation, where only the non-channel dims must fit.
        norm_layer: norm after a 1×1 conv projection; ``"default"`` is BatchNorm.
        path: the skip's module path, for error messages.

    Returns:
        A module mapping ``in_shape`` to ``out_shape`` (or, when ``match_channels`` is false,
        to ``out_shape`` with the input's channel count).

    Raises:
        ShapeMismatchError: no shortcut of this kind can make the shapes fit.
    """
    kind = parse_shortcut_kind(kind)
    a, b = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)

    def fail(msg: str, *fixes: str) -> ShapeMismatchError:
        return ShapeMismatchError(msg, path=path, skip_shape=a, branch_shape=b, fixes=fixes)

    custom = "pass shortcut=<an nn.Module mapping the input to the branch's shape>"
    if len(a) != len(b):
        raise fail(
            f"the body changes the tensor rank ({len(a)}-D input, {len(b)}-D output), "
            "which no shortcut can undo",
            "end the body with a layer that restores the rank (e.g. nn.Unflatten), "
            "or wrap only the layers that keep it",
            custom,
        )
    if a[0] != b[0]:
        raise fail(f"the body changes the batch size {a[0]} -> {b[0]}", custom)

    lay = resolve_layout(layout, len(a))
    cdim = channel_dim(lay, len(a))
    c_in, c_out = a[cdim], b[cdim]
    if not match_channels:
        c_out = c_in
    if lay != "NC":
        return _plan_features_last(a, b, c_in, c_out, kind, lay, fail, custom)

    spatial = len(a) - 2
    plan = _spatial_plan(a[2:], b[2:])
    same_space = all(p == "same" for p, _ in plan)
    if same_space and c_in == c_out:
        return nn.Identity()
    if kind == "identity":
        raise fail(
            "shortcut='identity' needs equal shapes",
            "use shortcut='auto' to project",
            "make the body keep its input's shape",
        )
    if not match_channels:
        return _plan_spatial_only(plan, b[2:], kind, spatial, fail)

    norm = default_norm(spatial) if norm_layer == "default" else norm_layer
    strides = tuple(s if p == "stride" else 1 for p, s in plan)
    modes = {p for p, _ in plan}

    def conv(stride: tuple[int, ...] = (1,) * spatial) -> list[nn.Module]:
        layers = [
            pointwise(c_in, c_out, ndim=len(a), layout="NC", stride=stride, bias=norm is None)
        ]
        return [*layers, norm(c_out)] if norm is not None else layers

    if kind == "pad":
        if "up" in modes or "crop" in modes:
            raise fail(
                f"shortcut='pad' only subsamples by an integer stride; spatial size "
                f"{fmt_shape(a[2:])} -> {fmt_shape(b[2:])} needs resampling",
                "use shortcut='auto' or 'resample'",
            )
        if c_out < c_in:
            raise fail(
                f"shortcut='pad' cannot shrink channels {c_in} -> {c_out}",
                "use shortcut='project'",
            )
        return ZeroPad(c_in, c_out, stride=strides, dim=1)
    if kind == "avgdown":
        if "up" in modes or "crop" in modes:
            raise fail(
                "shortcut='avgdown' only downsamples by an integer stride",
                "use shortcut='auto' or 'resample'",
            )
        layers: list[nn.Module] = []
        if any(s > 1 for s in strides):
            layers.append(
                _AVG[spatial](strides, stride=strides, ceil_mode=True, count_include_pad=False)
            )
        return nn.Sequential(*layers, *conv())
    if kind == "resample" or "up" in modes:
        if kind == "project" and "up" in modes:
            raise fail("shortcut='project' cannot upsample", "use shortcut='auto' or 'resample'")
        resample = _resampler(a[2:], b[2:])
        return nn.Sequential(resample, *conv()) if c_in != c_out else resample
    # kind in ("auto", "project"): downsampling, or only channels change.
    if "crop" in modes:
        crop = CenterCrop(b[2:])
        return nn.Sequential(crop, *conv()) if c_in != c_out else crop
    return nn.Sequential(*conv(strides))


def _resampler(s_in: Sequence[int], s_out: Sequence[int]) -> Resample:
    # An integer scale factor keeps working when the input size later changes.
    if all(o % i == 0 and o >= i for i, o in zip(s_in, s_out, strict=True)):
        return Resample(scale_factor=[o // i for i, o in zip(s_in, s_out, strict=True)])
    return Resample(size=s_out)


def _plan_spatial_only(
    plan: list[tuple[str, int]],
    s_out: Sequence[int],
    kind: str,
    spatial: int,
    fail: Callable[..., ShapeMismatchError],
) -> nn.Module:
    """Concatenation: fit the spatial dims without touching channels (pool, crop, resample)."""
    modes = {p for p, _ in plan}
    strides = tuple(s if p == "stride" else 1 for p, s in plan)
    if modes <= {"same", "stride"} and kind in ("auto", "avgdown", "project"):
        return _AVG[spatial](strides, stride=strides, ceil_mode=True, count_include_pad=False)
    if modes <= {"same", "stride"} and kind == "pad":
        return ZeroPad(0, 0, stride=strides)
    if modes <= {"same", "crop"} and kind in ("auto", "project"):
        return CenterCrop(s_out)
    if kind in ("auto", "resample"):
        return Resample(size=s_out)
    raise fail(f"shortcut={kind!r} cannot fit the spatial size", "use shortcut='auto'")


def _plan_features_last(
    a: tuple[int, ...],
    b: tuple[int, ...],
    c_in: int,
    c_out: int,
    kind: str,
    layout: Layout,
    fail: Callable[..., ShapeMismatchError],
    custom: str,
) -> nn.Module:
    """Vectors ``(N, F)`` and sequences ``(N, T, F)``: only the feature dim may change."""
    if a[1:-1] != b[1:-1]:
        raise fail(
            f"the body changes the sequence/middle dims {fmt_shape(a[1:-1])} -> "
            f"{fmt_shape(b[1:-1])}; a {layout} shortcut only maps the last (feature) dim",
            "keep the sequence length in the body (e.g. return_sequences / full output)",
            "pass layout='NC' if dim 1 holds channels",
            custom,
        )
    if c_in == c_out:
        return nn.Identity()
    if kind == "identity":
        raise fail("shortcut='identity' needs equal feature sizes", "use shortcut='auto'")
    if kind in ("auto", "project"):
        return nn.Linear(c_in, c_out)
    if kind == "pad":
        if c_out < c_in:
            raise fail(
                f"shortcut='pad' cannot shrink features {c_in} -> {c_out}",
                "use shortcut='project'",
            )
        return ZeroPad(c_in, c_out, dim=len(a) - 1)
    raise fail(
        f"shortcut={kind!r} works on channels-first conv maps only",
        "use shortcut='project' for feature vectors and sequences",
    )
