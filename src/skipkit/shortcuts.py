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
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from skipkit._plan import ShapeDiff, analyse_shapes
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


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(N, C, *S) -> (N, C, *size)``: the spatial dims cropped around the centre."""
    index: list[slice] = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size, strict=True):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


class CenterCrop(nn.Module):
    """Crop the spatial dims of ``(N, C, *S)`` to ``size`` around the centre (U-Net style)."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return center_crop(x, self.size)

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


@dataclass(frozen=True)
class _Job:
    """One channels-first shortcut to build: the analysis, the channel counts and the norm."""

    diff: ShapeDiff
    c_in: int
    c_out: int
    norm: NormLayer | None
    fail: Callable[..., ShapeMismatchError]

    @property
    def spatial(self) -> int:
        return len(self.diff.skip) - 2

    @property
    def size_out(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.diff.branch[2:])  # type: ignore[arg-type]

    def conv(self, stride: tuple[int, ...] | None = None) -> list[nn.Module]:
        """The 1×1 conv projection (+ norm), strided by ``stride`` (default 1)."""
        stride = stride or (1,) * self.spatial
        ndim = len(self.diff.skip)
        layers = [
            pointwise(
                self.c_in, self.c_out, ndim=ndim, layout="NC", stride=stride, bias=self.norm is None
            )
        ]
        return [*layers, self.norm(self.c_out)] if self.norm is not None else layers

    def with_conv(self, first: nn.Module) -> nn.Module:
        """``first``, then a 1×1 projection when the channels change."""
        return nn.Sequential(first, *self.conv()) if self.c_in != self.c_out else first


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

    The shapes are compared by :func:`skipkit._plan.analyse_shapes`; one builder per kind
    turns that analysis into modules.

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

    lay = resolve_layout(layout, len(a))
    diff = analyse_shapes(a, b, channel_axis=channel_dim(lay, len(a)))
    if diff.rank_changed:
        raise fail(
            f"the body changes the tensor rank ({len(a)}-D input, {len(b)}-D output), "
            "which no shortcut can undo",
            "end the body with a layer that restores the rank (e.g. nn.Unflatten), "
            "or wrap only the layers that keep it",
            _CUSTOM,
        )
    if diff.batch_changed:
        raise fail(f"the body changes the batch size {a[0]} -> {b[0]}", _CUSTOM)

    c_in = a[diff.channel_axis]
    c_out = b[diff.channel_axis] if match_channels else c_in
    if lay != "NC":
        return _plan_features_last(diff, c_in, c_out, kind, lay, fail)
    if diff.same_size and c_in == c_out:
        return nn.Identity()
    if kind == "identity":
        raise fail(
            "shortcut='identity' needs equal shapes",
            "use shortcut='auto' to project",
            "make the body keep its input's shape",
        )
    if not match_channels:
        return _plan_spatial_only(diff, kind, fail)
    norm = default_norm(len(a) - 2) if norm_layer == "default" else norm_layer
    return _BUILDERS[kind](_Job(diff, c_in, c_out, norm, fail))


_CUSTOM = "pass shortcut=<an nn.Module mapping the input to the branch's shape>"


def _build_pad(job: _Job) -> nn.Module:
    """Option A: subsample by the stride, zero channels; no parameters."""
    if job.diff.kinds & {"up", "crop"}:
        raise job.fail(
            f"shortcut='pad' only subsamples by an integer stride; spatial size "
            f"{fmt_shape(job.diff.skip[2:])} -> {fmt_shape(job.size_out)} needs resampling",
            "use shortcut='auto' or 'resample'",
        )
    if job.c_out < job.c_in:
        raise job.fail(
            f"shortcut='pad' cannot shrink channels {job.c_in} -> {job.c_out}",
            "use shortcut='project'",
        )
    return ZeroPad(job.c_in, job.c_out, stride=job.diff.strides, dim=1)


def _build_avgdown(job: _Job) -> nn.Module:
    """ResNet-D: average pool by the stride (ceil mode), then the 1×1 projection."""
    if job.diff.kinds & {"up", "crop"}:
        raise job.fail(
            "shortcut='avgdown' only downsamples by an integer stride",
            "use shortcut='auto' or 'resample'",
        )
    strides = job.diff.strides
    layers: list[nn.Module] = []
    if any(s > 1 for s in strides):
        layers.append(
            _AVG[job.spatial](strides, stride=strides, ceil_mode=True, count_include_pad=False)
        )
    return nn.Sequential(*layers, *job.conv())


def _build_resample(job: _Job) -> nn.Module:
    """Interpolate to the branch's size, then project the channels if they change."""
    return job.with_conv(_resampler(job.diff))


def _build_crop(job: _Job) -> nn.Module:
    """Centre-crop to the branch's size (valid convolutions), then project the channels."""
    return job.with_conv(CenterCrop(job.size_out))


def _build_project(job: _Job) -> nn.Module:
    """A strided 1×1 projection; a crop first when no stride gives the branch's size."""
    if "up" in job.diff.kinds:
        raise job.fail("shortcut='project' cannot upsample", "use shortcut='auto' or 'resample'")
    if "crop" in job.diff.kinds:
        return _build_crop(job)
    return nn.Sequential(*job.conv(job.diff.strides))


def _build_auto(job: _Job) -> nn.Module:
    """Upsampling resamples; everything else projects."""
    return _build_resample(job) if "up" in job.diff.kinds else _build_project(job)


_BUILDERS: dict[str, Callable[[_Job], nn.Module]] = {
    "auto": _build_auto,
    "project": _build_project,
    "pad": _build_pad,
    "avgdown": _build_avgdown,
    "resample": _build_resample,
}


def _resampler(diff: ShapeDiff) -> Resample:
    # An integer scale factor keeps working when the input size later changes.
    if diff.scales is not None:
        return Resample(scale_factor=diff.scales)
    return Resample(size=[int(s) for s in diff.branch[2:]])  # type: ignore[arg-type]


def _plan_spatial_only(
    diff: ShapeDiff, kind: str, fail: Callable[..., ShapeMismatchError]
) -> nn.Module:
    """Concatenation: fit the spatial dims without touching channels (pool, crop, resample)."""
    kinds, strides = diff.kinds, diff.strides
    size_out = [int(s) for s in diff.branch[2:]]  # type: ignore[arg-type]
    if kinds <= {"same", "stride"} and kind in ("auto", "avgdown", "project"):
        return _AVG[len(strides)](strides, stride=strides, ceil_mode=True, count_include_pad=False)
    if kinds <= {"same", "stride"} and kind == "pad":
        return ZeroPad(0, 0, stride=strides)
    if kinds <= {"same", "crop"} and kind in ("auto", "project"):
        return CenterCrop(size_out)
    if kind in ("auto", "resample"):
        return Resample(size=size_out)
    raise fail(f"shortcut={kind!r} cannot fit the spatial size", "use shortcut='auto'")


def _plan_features_last(
    diff: ShapeDiff,
    c_in: int,
    c_out: int,
    kind: str,
    layout: Layout,
    fail: Callable[..., ShapeMismatchError],
) -> nn.Module:
    """Vectors ``(N, F)`` and sequences ``(N, T, F)``: only the feature dim may change."""
    a, b = diff.skip, diff.branch
    if not diff.same_size:
        raise fail(
            f"the body changes the sequence/middle dims {fmt_shape(a[1:-1])} -> "
            f"{fmt_shape(b[1:-1])}; a {layout} shortcut only maps the last (feature) dim",
            "keep the sequence length in the body (e.g. return_sequences / full output)",
            "pass layout='NC' if dim 1 holds channels",
            _CUSTOM,
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
