"""ImageNet ResNets (He et al. 2015) with torchvision's ``state_dict`` keys, ResNet-D, plain twins.

::

    x ─ conv1 7×7/2 ─ bn1 ─ relu ─ maxpool/2 ─ layer1 ─ layer2/2 ─ layer3/2 ─ layer4/2
      ─ avgpool ─ fc

    Bottleneck:
      x ─┬─ conv1 1×1 ─ bn1 ─ relu ─ conv2 3×3/s ─ bn2 ─ relu ─ conv3 1×1 ─ bn3 ─(+)─ relu ─>
         └──────────────────── downsample (or identity) ──────────────────────┘

Keys are torchvision's (``conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0/1, fc``), so
``model.load_state_dict(torchvision_model.state_dict())`` works with ``strict=True`` and
gives the same outputs; ``weights=`` loads a local file or a URL (torchvision's ImageNet
checkpoints included). Shortcut options where a stage changes the shape:

- ``"B"`` / ``"project"``: 1×1 conv (stride s) + BN, torchvision's default.
- ``"avgdown"`` / ``"D"``: ResNet-D (He et al. 2019, "Bag of Tricks"): 2×2 average pool
  (stride s), then 1×1 conv + BN, so the shortcut sees every pixel. ``resnet50d`` and
  friends also use the deep stem (``stem="deep"``: three 3×3 convs).
- ``"A"`` / ``"pad"``: strided subsampling + zero channels, no parameters.

``skip=False`` builds the plain twin (same layers, no shortcut). The blocks are
:class:`~skipkit.skips.SkipModule` s written like torchvision's (direct conv/bn attributes) so
the forward costs no more than torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict

import torch
from torch import nn
from typing_extensions import Unpack

from skipkit.models._blocks import WeightsSpec, he_init, load_weights
from skipkit.models._registry import register_model
from skipkit.shortcuts import ZeroPad
from skipkit.skips import DropPath, SkipInfo, SkipModule

NormLayer = Callable[[int], nn.Module]

_SHORTCUTS = {
    "b": "B",
    "project": "B",
    "avgdown": "avgdown",
    "d": "avgdown",
    "a": "A",
    "pad": "A",
}


def _shortcut_option(shortcut: str) -> str:
    key = shortcut.lower() if isinstance(shortcut, str) else shortcut
    if key not in _SHORTCUTS:
        raise ValueError(
            f"ResNet shortcut={shortcut!r} is not an option; use 'B' (1x1 conv + BN projection, "
            "torchvision's default, alias 'project'), 'avgdown' (ResNet-D: average pool, then "
            "1x1 conv + BN, alias 'D') or 'A' (subsample + zero channels, alias 'pad')"
        )
    return _SHORTCUTS[key]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def make_downsample(
    in_channels: int, out_channels: int, stride: int, option: str, norm_layer: NormLayer
) -> nn.Module:
    """The shortcut of a block that changes the shape: ``(N, C_in, H, W) -> (N, C_out, H/s, W/s)``.

    ``"B"``: ``Sequential(conv1×1/s, norm)`` (keys ``0, 1`` as torchvision); ``"avgdown"``:
    ``Sequential(AvgPool2d(s) or Identity, conv1×1, norm)`` (keys ``1, 2`` as timm's ResNet-D);
    ``"A"``: :class:`~skipkit.shortcuts.ZeroPad`.
    """
    if option == "A":
        return ZeroPad(in_channels, out_channels, stride=(stride, stride))
    if option == "avgdown":
        pool: nn.Module = (
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            if stride > 1
            else nn.Identity()
        )
        return nn.Sequential(pool, _conv1x1(in_channels, out_channels), norm_layer(out_channels))
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), norm_layer(out_channels))


class _BasicLayers(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.stride = stride


class _BottleneckLayers(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3×3 (ResNet v1.5)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride


def _describe(block: BasicBlock | Bottleneck) -> SkipInfo:
    ds = block.downsample
    where = block.path or ""
    return SkipInfo(
        path=where,
        kind=type(block).__name__,
        tap="input",
        dst=where,
        shortcut="identity" if ds is None else type(ds).__name__,
        merge="Add",
        parameters=0 if ds is None else sum(p.numel() for p in ds.parameters()),
        enabled=block.skip_enabled,
        added=False,
    )


class BasicBlock(_BasicLayers, SkipModule):
    """ResNet-18/34 block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``.

    ``(N, inplanes, H, W) -> (N, planes, H/stride, W/stride)``. ``downsample`` is ``None``
    for the identity. With ``skip_enabled = False`` it computes :class:`PlainBasicBlock`.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(inplanes, planes, stride, norm_layer)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.skip_enabled:
            out += x if self.downsample is None else self.downsample(x)  # (N, C', H', W')
        return self.relu(out)

    def describe(self) -> SkipInfo:
        return _describe(self)


class Bottleneck(_BottleneckLayers, SkipModule):
    """ResNet-50/101/152 block: 1×1 (reduce) ─ 3×3 (stride) ─ 1×1 (expand ×4), plus the skip.

    ``(N, inplanes, H, W) -> (N, 4*planes, H/stride, W/stride)``. With
    ``skip_enabled = False`` it computes :class:`PlainBottleneck`.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(inplanes, planes, stride, norm_layer)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.skip_enabled:
            out += x if self.downsample is None else self.downsample(x)  # (N, C', H', W')
        return self.relu(out)

    def describe(self) -> SkipInfo:
        return _describe(self)


class PlainBasicBlock(_BasicLayers):
    """The plain twin of :class:`BasicBlock` (same keys, minus ``downsample``)."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__(inplanes, planes, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class PlainBottleneck(_BottleneckLayers):
    """The plain twin of :class:`Bottleneck` (same keys, minus ``downsample``)."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__(inplanes, planes, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)))


class ResNet(nn.Module):
    """An ImageNet ResNet: ``(N, in_channels, H, W) -> (N, num_classes)``.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: outputs of ``fc``.
        in_channels: input channels of ``conv1``.
        shortcut: ``"B"`` (projection), ``"avgdown"`` (ResNet-D) or ``"A"`` (zero-pad), used
            where a block changes the shape; identity elsewhere.
        stem: ``"default"`` (7×7 conv, stride 2) or ``"deep"`` (ResNet-C: 3×3 convs of 32, 32,
            64 channels, the first with stride 2; keys ``conv1.0/1/3/4/6`` as timm).
        skip: ``False`` builds the plain twin.
        zero_init_last: zero the last norm of every block so each starts as the identity.
        norm_layer: the norm, called with the channel count (``nn.BatchNorm2d`` by default;
            e.g. ``lambda c: nn.GroupNorm(32, c)``).
        drop_path: stochastic depth; block ``i`` of ``B`` drops its branch with probability
            ``drop_path * i / (B - 1)`` (0 for the first, ``drop_path`` for the last).
    """

    def __init__(
        self,
        block: Literal["basic", "bottleneck"],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        shortcut: str = "B",
        stem: Literal["default", "deep"] = "default",
        skip: bool = True,
        zero_init_last: bool = False,
        norm_layer: NormLayer | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet(block={block!r}) must be 'basic' or 'bottleneck'")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"ResNet(layers={list(layers)}) needs 4 stages of >= 1 block each")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"ResNet(drop_path={drop_path}) needs 0 <= drop_path < 1")
        if drop_path > 0 and not skip:
            raise ValueError(
                "ResNet(skip=False, drop_path>0): stochastic depth drops a block's branch and "
                "keeps its skip; a plain net has no skip, so a dropped block zeroes the signal. "
                "Use drop_path=0 for the plain twin"
            )
        if stem not in ("default", "deep"):
            raise ValueError(f"ResNet(stem={stem!r}) must be 'default' or 'deep'")
        option = _shortcut_option(shortcut)
        norm = norm_layer if norm_layer is not None else nn.BatchNorm2d
        self.block, self.skip, self.shortcut = block, skip, option
        if stem == "deep":
            self.conv1: nn.Module = nn.Sequential(
                _conv3x3(in_channels, 32, 2),
                norm(32),
                nn.ReLU(inplace=True),
                _conv3x3(32, 32),
                norm(32),
                nn.ReLU(inplace=True),
                _conv3x3(32, 64),
            )
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        total = sum(int(n) for n in layers)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        inplanes, first = 64, 0
        stages: list[nn.Sequential] = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = rates[first : first + int(n)]
            stages.append(self._make_stage(block, inplanes, planes, stride, option, norm, blocks))
            inplanes = planes * (4 if block == "bottleneck" else 1)
            first += int(n)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        he_init(self)
        if zero_init_last:
            for m in self.modules():
                last = (
                    m.bn3
                    if isinstance(m, _BottleneckLayers)
                    else m.bn2
                    if isinstance(m, _BasicLayers)
                    else None
                )
                weight = getattr(last, "weight", None)
                if isinstance(weight, torch.Tensor):
                    nn.init.zeros_(weight)

    def _make_stage(
        self,
        block: str,
        inplanes: int,
        planes: int,
        stride: int,
        option: str,
        norm: NormLayer,
        rates: Sequence[float],
    ) -> nn.Sequential:
        """One stage of ``len(rates)`` blocks; the first one strides and changes channels."""
        expansion = 4 if block == "bottleneck" else 1
        out = planes * expansion
        layers: list[nn.Module] = []
        for j, rate in enumerate(rates):
            s = stride if j == 0 else 1
            if self.skip:
                ds = None
                if j == 0 and (s != 1 or inplanes != out):
                    ds = make_downsample(inplanes, out, s, option, norm)
                cls = Bottleneck if block == "bottleneck" else BasicBlock
                layers.append(cls(inplanes, planes, s, ds, norm_layer=norm, drop_path=rate))
            else:
                plain = PlainBottleneck if block == "bottleneck" else PlainBasicBlock
                layers.append(plain(inplanes, planes, s, norm_layer=norm))
            inplanes = out
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W) -> (N, 512*expansion, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNetOptions(TypedDict, total=False):
    """Keyword options of the registered ImageNet ResNet builders (see :class:`ResNet`)."""

    num_classes: int
    in_channels: int
    shortcut: str
    stem: Literal["default", "deep"]
    skip: bool
    zero_init_last: bool
    norm_layer: NormLayer | None
    drop_path: float
    weights: WeightsSpec | None
    progress: bool


def resnet(
    block: Literal["basic", "bottleneck"],
    layers: Sequence[int],
    *,
    weights: WeightsSpec | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> ResNet:
    """Build a :class:`ResNet` and, when ``weights`` is given, load them.

    ``weights`` is a local ``.safetensors`` file, a torch checkpoint (read with
    ``weights_only=True``), an http(s) URL (cached by ``torch.hub``) or a ``state_dict``;
    e.g. torchvision's ``ResNet50_Weights.IMAGENET1K_V2.url``. A checkpoint whose ``fc`` has
    another size than ``num_classes`` leaves ``fc`` freshly initialised (fine-tuning).

    Raises:
        ValueError: bad options, or a checkpoint that does not fit (keys and shapes listed).
    """
    model = ResNet(block, layers, **kwargs)
    if weights is not None:
        load_weights(model, weights, reinit=("fc.",), progress=progress)
    return model


@register_model
def resnet18(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-18 (11.7M parameters); options as :class:`ResNet` plus ``weights``."""
    return resnet("basic", (2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-34 (21.8M parameters); options as :class:`ResNet` plus ``weights``."""
    return resnet("basic", (3, 4, 6, 3), **kwargs)


@register_model
def resnet50(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-50 (25.6M parameters); options as :class:`ResNet` plus ``weights``."""
    return resnet("bottleneck", (3, 4, 6, 3), **kwargs)


@register_model
def resnet101(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-101 (44.5M parameters); options as :class:`ResNet` plus ``weights``."""
    return resnet("bottleneck", (3, 4, 23, 3), **kwargs)


@register_model
def resnet152(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-152 (60.2M parameters); options as :class:`ResNet` plus ``weights``."""
    return resnet("bottleneck", (3, 8, 36, 3), **kwargs)


def _resnet_d(
    block: Literal["basic", "bottleneck"], layers: Sequence[int], kwargs: ResNetOptions
) -> ResNet:
    opts: dict[str, Any] = {"shortcut": "avgdown", "stem": "deep", **kwargs}
    return resnet(block, layers, **opts)


@register_model
def resnet18d(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-18-D: deep stem + average-pool shortcuts (He et al. 2019)."""
    return _resnet_d("basic", (2, 2, 2, 2), kwargs)


@register_model
def resnet34d(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-34-D: deep stem + average-pool shortcuts (He et al. 2019)."""
    return _resnet_d("basic", (3, 4, 6, 3), kwargs)


@register_model
def resnet50d(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-50-D (25.6M parameters): deep stem + average-pool shortcuts (He et al. 2019)."""
    return _resnet_d("bottleneck", (3, 4, 6, 3), kwargs)


@register_model
def resnet101d(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-101-D: deep stem + average-pool shortcuts (He et al. 2019)."""
    return _resnet_d("bottleneck", (3, 4, 23, 3), kwargs)


@register_model
def resnet152d(**kwargs: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-152-D: deep stem + average-pool shortcuts (He et al. 2019)."""
    return _resnet_d("bottleneck", (3, 8, 36, 3), kwargs)


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PlainBasicBlock",
    "PlainBottleneck",
    "ResNet",
    "ResNetOptions",
    "make_downsample",
    "resnet",
    "resnet18",
    "resnet18d",
    "resnet34",
    "resnet34d",
    "resnet50",
    "resnet50d",
    "resnet101",
    "resnet101d",
    "resnet152",
    "resnet152d",
]
