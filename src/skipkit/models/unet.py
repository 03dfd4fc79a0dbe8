"""U-Net (Ronneberger et al. 2015): long skips from each encoder level to the decoder level of
the same resolution.

::

    x ─► enc0 ───────────────────── long skip 0 ─────────────────────► ⊕ ─► dec0 ─► head ─► y
          │  (N, c, *S)                                                ▲
         pool                                                          up
          ▼                                                            │
         enc1 ─────────────── long skip 1 ───────────────► ⊕ ─► dec1 ──┘
          │  (N, 2c, *S/2)                                 ▲
         pool                                              up
          ▼                                                │
         enc2 ───────── long skip 2 ─────────► ⊕ ─► dec2 ──┘
          │  (N, 4c, *S/4)                     ▲
         pool                                  up
          ▼                                    │
         bottleneck  (N, 8c, *S/8) ────────────┘

    depth = 3 drawn; c = base_channels; x: (N, C_in, *S), y: (N, C_out, *S)

Each ``⊕`` is a :class:`LongSkip`: it fits the decoder map to the stored encoder feature
(``align``) and merges them (``concat`` as in the paper, or ``add``). Encoder levels are two
3×3 convs (each followed by ``norm`` and ReLU); ``pool`` is a 2× max-pool; ``up`` doubles the
size and halves the channels (a 2×2 transposed conv, or interpolation + 1×1 conv); decoder
levels are two 3×3 convs; ``head`` is a 1×1 conv.

Sizes that are not multiples of ``2**depth``: max-pooling floors odd sizes, so the upsampled
decoder map is one pixel short of the encoder feature at those levels. ``align`` decides:

- ``"pad"`` (default): zero-pad the upsampled decoder map to the encoder feature's size
  (evenly, the odd pixel at the end) at every level where they differ. Output size = input
  size; no input padding, no output cropping.
- ``"crop"``: centre-crop the encoder feature to the decoder map's size (the paper's way).
  Output size = ``floor(S / 2**depth) * 2**depth`` per dim (e.g. 37 -> 32 for depth 4).
- ``"interpolate"``: resize the decoder map to the encoder feature's size ((bi/tri)linear).
  Output size = input size.
- ``"error"``: raise :class:`~skipkit.ShapeMismatchError` naming the size, the nearest valid
  sizes and the other modes.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from skipkit._plan import analyse_shapes
from skipkit.merges import Add, Concat, Merge
from skipkit.models._blocks import BATCHNORM, CONV, WeightsSpec, check_dims, load_weights
from skipkit.models._registry import register_model
from skipkit.shapes import Layout, ShapeMismatchError, fmt_shape
from skipkit.shortcuts import center_crop
from skipkit.skips import SkipInfo, SkipModule

__all__ = ["ALIGNS", "ConvBlock", "CropSkip", "LongSkip", "UNet", "UpStage", "unet"]

Align = Literal["pad", "crop", "interpolate", "error"]
ALIGNS: tuple[str, ...] = ("pad", "crop", "interpolate", "error")
NormSpec = Literal["batch", "instance"] | Callable[[int], nn.Module] | None

_TRANSPOSE: dict[int, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
_MAXPOOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_INSTANCENORM: dict[int, type[nn.Module]] = {
    1: nn.InstanceNorm1d,
    2: nn.InstanceNorm2d,
    3: nn.InstanceNorm3d,
}
_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
_ALIGN_FIXES = [
    "align='pad' (zero-pad the decoder map; output size = input size)",
    "align='crop' (crop the encoder feature; output size rounded down to a multiple of 2**depth)",
    "align='interpolate' (resize the decoder map; output size = input size)",
]


def _norm_factory(norm: NormSpec, dims: int) -> Callable[[int], nn.Module] | None:
    if norm is None or callable(norm):
        return norm
    if norm == "batch":
        return BATCHNORM[dims]
    if norm == "instance":
        return lambda c: _INSTANCENORM[dims](c, affine=True)
    raise ValueError(
        f"unet(norm={norm!r}): use 'batch', 'instance', None (the 2015 paper: no norm) or a "
        "callable channels -> nn.Module (e.g. lambda c: nn.GroupNorm(8, c))"
    )


class ConvBlock(nn.Sequential):
    """Two 3×3 convs, each followed by ``norm`` and ReLU: ``(N, C_in, *S) -> (N, C_out, *S)``
    (zero padding keeps the size). Keys: ``conv1, [norm1], act1, conv2, [norm2], act2``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dims: int = 2,
        norm: Callable[[int], nn.Module] | None = BATCHNORM[2],
    ) -> None:
        layers: list[tuple[str, nn.Module]] = []
        for i, c_in in enumerate((in_channels, out_channels), start=1):
            # A bias right before a norm's own shift is redundant.
            layers.append(
                (f"conv{i}", CONV[dims](c_in, out_channels, 3, padding=1, bias=norm is None))
            )
            if norm is not None:
                layers.append((f"norm{i}", norm(out_channels)))
            layers.append((f"act{i}", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


class CropSkip(Merge):
    """``inner(crop(s), b)``: the encoder feature centre-cropped to the decoder map's size,
    then joined by ``inner`` (``align="crop"``, the paper's way). Shapes: ``(N, C_s, *S_enc),
    (N, C_b, *S_dec) -> inner's output at S_dec``; without the skip: ``inner``'s plain twin."""

    def __init__(self, inner: Merge) -> None:
        super().__init__()
        self.inner = inner
        self.match_channels = inner.match_channels  # type: ignore[misc]
        self._name = inner.name
        self._formula = re.sub(r"\bs\b", "crop(s)", inner.formula)

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        cropped = (*tuple(skip_shape)[:2], *tuple(branch_shape)[2:])
        self.inner.setup(cropped, branch_shape, layout, device=device, dtype=dtype)

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(center_crop(skip, branch.shape[2:]), branch)
        return out

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return self.inner.without_skip(branch)


class LongSkip(SkipModule):
    """A U-Net long skip: joins a stored encoder feature to the decoder map of its level.

    ``forward(x, dec)``: ``x`` is the encoder feature ``(N, C_s, *S_enc)`` (the tapped
    signal, through an identity shortcut), ``dec`` the upsampled decoder map
    ``(N, C_b, *S_dec)``. The branch fits the decoder map to the encoder feature (``align``,
    see the module docstring; under ``align="crop"`` the merge crops the encoder feature
    instead), then ``merge`` joins them: ``concat`` gives ``(N, C_b + C_s, *S)`` (decoder
    channels first), ``add`` (needs ``C_b == C_s``) gives ``(N, C_s, *S)``. ``S`` is
    ``S_enc``, or ``S_dec`` under ``align="crop"``.

    With ``skip_enabled = False`` (the plain twin) the encoder feature is dropped: ``concat``
    sees zeros in its place (so the same weights fit), ``add`` returns the decoder map. The
    sizes are aligned the same way, so both twins give the same output shape.

    Args:
        merge: ``"concat"``, ``"add"`` or a :class:`~skipkit.Concat` / :class:`~skipkit.Add`.
        align: ``"pad"``, ``"crop"``, ``"interpolate"`` or ``"error"``.
        level: the encoder level it taps (for :func:`skipkit.list_skips` and messages).
    """

    def __init__(
        self, merge: str | Merge = "concat", align: Align = "pad", *, level: int | None = None
    ) -> None:
        super().__init__()
        if align not in ALIGNS:
            raise ValueError(f"LongSkip(align={align!r}): choose one of {ALIGNS}")
        if merge == "concat":
            merge = Concat()
        elif merge == "add":
            merge = Add()
        if not isinstance(merge, Concat | Add) or getattr(merge, "out_channels", None):
            raise ValueError(
                f"LongSkip(merge={merge!r}): a U-Net long skip merges with 'concat' (the "
                "paper) or 'add'"
            )
        self.tap = "encoder" if level is None else f"encoder.{level}"
        self.shortcut = nn.Identity()
        self.merge = CropSkip(merge) if align == "crop" else merge
        self.align: Align = align
        self.level = level
        self._set_up = False

    def _fail(self, message: str, skip: torch.Tensor, branch: torch.Tensor) -> ShapeMismatchError:
        return ShapeMismatchError(
            message,
            path=self.path,
            skip_shape=tuple(skip.shape),
            branch_shape=tuple(branch.shape),
            fixes=[f for f in _ALIGN_FIXES if not f.startswith(f"align='{self.align}'")],
        )

    def branch(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The decoder map ``args[0]``, fitted to the encoder feature ``x`` (see ``align``)."""
        (dec,) = args
        out = self._fit(x, dec)
        if not self._set_up:  # the merge learns the skip's width, for the plain twin
            self.merge.setup(tuple(x.shape), tuple(out.shape), None)
            self._set_up = True
        return out

    def _fit(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        s_enc, s_dec = tuple(skip.shape[2:]), tuple(branch.shape[2:])
        # Decoder map -> encoder feature, per spatial dim ("up": the decoder map is smaller).
        diff = analyse_shapes(tuple(branch.shape), (*branch.shape[:2], *s_enc), channel_axis=1)
        if diff.same_size:
            return branch
        shrinks = not diff.kinds <= {"same", "up"}
        if self.align == "pad":
            if shrinks:
                raise self._fail(
                    f"align='pad' cannot pad the decoder map {fmt_shape(s_dec)} down to the "
                    f"encoder feature {fmt_shape(s_enc)}",
                    skip,
                    branch,
                )
            pad: list[int] = []
            for fit in reversed(diff.dims):  # F.pad takes the last dim first
                pad += fit.margins
            return F.pad(branch, pad)
        if self.align == "crop":
            if shrinks:
                raise self._fail(
                    f"align='crop' cannot crop the encoder feature {fmt_shape(s_enc)} up to "
                    f"the decoder map {fmt_shape(s_dec)}",
                    skip,
                    branch,
                )
            return branch  # the merge crops the encoder feature
        if self.align == "interpolate":
            mode = _LINEAR_MODE[branch.ndim - 2]
            return F.interpolate(branch, size=s_enc, mode=mode, align_corners=False)
        raise self._fail(
            f"the decoder map's size {fmt_shape(s_dec)} differs from the encoder feature's "
            f"{fmt_shape(s_enc)} (align='error')",
            skip,
            branch,
        )

    def describe(self) -> SkipInfo:
        return dataclasses.replace(super().describe(), shortcut=f"align={self.align}")

    def extra_repr(self) -> str:
        return f"align={self.align!r}, level={self.level}"


class UpStage(nn.Module):
    """One decoder level: ``up`` the deeper map, merge the encoder feature, two 3×3 convs.

    ``forward(x (N, 2c, *S/2), skip (N, c, *S)) -> (N, c, *S)`` (``*S`` cropped under
    ``align="crop"``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        dims: int,
        merge: str,
        align: Align,
        up: Literal["transpose", "interpolate"],
        norm: Callable[[int], nn.Module] | None,
        level: int,
    ) -> None:
        super().__init__()
        if up == "transpose":
            self.up: nn.Module = _TRANSPOSE[dims](in_channels, channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode=_LINEAR_MODE[dims], align_corners=False),
                CONV[dims](in_channels, channels, 1),
            )
        self.skip = LongSkip(merge, align, level=level)
        merged = 2 * channels if merge == "concat" else channels
        self.block = ConvBlock(merged, channels, dims=dims, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(self.skip(skip, self.up(x)))
        return out


class UNet(nn.Module):
    """U-Net: ``(N, in_channels, *S) -> (N, out_channels, *S')`` with ``len(S) == dims``.

    ``S' = S`` under ``align="pad"``, ``"interpolate"`` and ``"error"`` (which accepts only
    multiples of ``2**depth``); ``S' = floor(S / 2**depth) * 2**depth`` under ``"crop"``.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, for segmentation logits).
        depth: number of 2× downsamplings (the paper: 4).
        base_channels: channels of the first level, doubled at each level (the paper: 64).
        dims: 1, 2 or 3 spatial dims.
        merge: ``"concat"`` (the paper) or ``"add"`` (fewer decoder parameters).
        align: how a long skip fits sizes that are not multiples of ``2**depth``:
            ``"pad"``, ``"crop"``, ``"interpolate"`` or ``"error"`` (module docstring).
        up: ``"transpose"`` (2×2 transposed conv, the paper's up-conv) or ``"interpolate"``
            ((bi/tri)linear ×2 then a 1×1 conv).
        norm: after each 3×3 conv: ``"batch"``, ``"instance"``, ``None`` (the paper) or a
            callable ``channels -> nn.Module``.
        skip: ``False`` builds the plain twin: every :class:`LongSkip` is switched off for
            good (same modules and weights; the decoder gets no encoder features).

    Module tree: ``encoder.0 … encoder.{depth-1}`` (:class:`ConvBlock`), ``pool``,
    ``bottleneck``, ``decoder.0 … decoder.{depth-1}`` (:class:`UpStage`; ``decoder.i``
    merges ``encoder.i``'s feature through ``decoder.i.skip``) and ``head``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        *,
        depth: int = 4,
        base_channels: int = 64,
        dims: int = 2,
        merge: Literal["concat", "add"] = "concat",
        align: Align = "pad",
        up: Literal["transpose", "interpolate"] = "transpose",
        norm: NormSpec = "batch",
        skip: bool = True,
    ) -> None:
        super().__init__()
        check_dims("UNet", dims)
        if depth < 1 or base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"UNet needs depth, base_channels, in_channels and out_channels >= 1, got "
                f"{depth}, {base_channels}, {in_channels}, {out_channels}"
            )
        if merge not in ("concat", "add"):
            raise ValueError(f"UNet(merge={merge!r}): use 'concat' (the paper) or 'add'")
        if align not in ALIGNS:
            raise ValueError(f"UNet(align={align!r}): choose one of {ALIGNS}")
        if up not in ("transpose", "interpolate"):
            raise ValueError(f"UNet(up={up!r}): use 'transpose' or 'interpolate'")
        norm_layer = _norm_factory(norm, dims)
        self.depth, self.dims, self.align = depth, dims, align

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c, dims=dims, norm=norm_layer)
            for c_in, c in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
        )
        self.pool = _MAXPOOL[dims](2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], dims=dims, norm=norm_layer)
        self.decoder = nn.ModuleList(
            UpStage(
                widths[i + 1],
                widths[i],
                dims=dims,
                merge=merge,
                align=align,
                up=up,
                norm=norm_layer,
                level=i,
            )
            for i in range(depth)
        )
        self.head = CONV[dims](base_channels, out_channels, 1)
        for i, stage in enumerate(self.decoder):
            assert isinstance(stage, UpStage)
            stage.skip.path = f"decoder.{i}.skip"
            for part in stage.skip.merge.modules():
                if isinstance(part, Merge):
                    part.path = stage.skip.path
            stage.skip.skip_enabled = skip

    def _check_size(self, x: torch.Tensor) -> None:
        size = tuple(x.shape[2:])
        if len(size) != self.dims:
            raise ShapeMismatchError(
                f"UNet(dims={self.dims}) takes (N, C, {', '.join('S' * self.dims)}) inputs, "
                f"got {x.ndim}-D {fmt_shape(x.shape)}",
                path="UNet",
                fixes=[
                    f"build unet(..., dims={x.ndim - 2})"
                    if x.ndim > 2
                    else "pass a batch with channels and spatial dims"
                ],
            )
        m = 2**self.depth
        if any(s < m for s in size):
            raise ShapeMismatchError(
                f"input size {fmt_shape(size)} is smaller than 2**depth = {m}: the deepest "
                "level would be empty",
                path="UNet",
                fixes=[f"use depth <= {max(0, min(size).bit_length() - 1)}", f"pad to >= {m}"],
            )
        if self.align == "error" and any(s % m for s in size):
            below = tuple(max(m, s // m * m) for s in size)
            above = tuple(-(-s // m) * m for s in size)
            raise ShapeMismatchError(
                f"input size {fmt_shape(size)} is not a multiple of 2**depth = {m}, so the "
                "decoder maps would not match the encoder features (align='error'); the "
                f"nearest valid sizes are {fmt_shape(below)} and {fmt_shape(above)}",
                path="UNet",
                fixes=[
                    *_ALIGN_FIXES,
                    f"resize or pad inputs to {fmt_shape(below)} or {fmt_shape(above)}",
                ],
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        features: list[torch.Tensor] = []
        for enc in self.encoder:
            x = enc(x)  # (N, c·2^i, *S/2^i)
            features.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)  # (N, c·2^depth, *S/2^depth)
        for i in range(self.depth - 1, -1, -1):
            x = self.decoder[i](x, features[i])  # (N, c·2^i, *S/2^i)
        out: torch.Tensor = self.head(x)
        return out

    def long_skips(self) -> list[LongSkip]:
        """The long skips, ``encoder.0``'s first."""
        return [m for m in self.modules() if isinstance(m, LongSkip)]


@register_model
def unet(
    in_channels: int = 1,
    out_channels: int = 2,
    *,
    depth: int = 4,
    base_channels: int = 64,
    dims: int = 2,
    merge: Literal["concat", "add"] = "concat",
    align: Align = "pad",
    up: Literal["transpose", "interpolate"] = "transpose",
    norm: NormSpec = "batch",
    skip: bool = True,
    weights: WeightsSpec | None = None,
) -> UNet:
    """U-Net (Ronneberger et al. 2015): ``(N, in_channels, *S) -> (N, out_channels, *S)``.

    Arguments as :class:`UNet`, plus ``weights``: a local ``.safetensors`` file, a torch
    checkpoint (read with ``weights_only=True``), an http(s) URL or a ``state_dict``.
    ``unet(1, 2, norm=None)`` is the paper's network with padded convolutions (31.0M
    parameters).

    Example:
        >>> model = unet(3, 2, depth=2, base_channels=8, align="pad")
        >>> model(torch.randn(1, 3, 37, 45)).shape
        torch.Size([1, 2, 37, 45])
    """
    model = UNet(
        in_channels,
        out_channels,
        depth=depth,
        base_channels=base_channels,
        dims=dims,
        merge=merge,
        align=align,
        up=up,
        norm=norm,
        skip=skip,
    )
    if weights is not None:
        load_weights(model, weights)
    return model
