"""CIFAR ResNets of He et al. 2015 (section 4.2) and their plain twins.

::

    x ─ conv3×3(16) ─ BN ─ ReLU ─ [n blocks, 16 ch] ─ [n blocks, 32 ch, /2] ─ [n blocks, 64 ch, /2]
      ─ global avg pool ─ fc

    block:  x ──┬── conv3×3 ─ BN ─ ReLU ─ conv3×3 ─ BN ──(+)── ReLU ──>
                └──────────── shortcut ───────────────┘

Depth ``6n + 2``: ``resnet20/32/44/56/110/1202`` (n = 3, 5, 7, 9, 18, 200). The shortcut is the
identity except where a stage halves the map and doubles the channels: option ``"A"`` (the
paper's CIFAR default) subsamples by 2 and appends zero channels, no parameters; option ``"B"``
projects with a 1×1 conv + BN. ``skip=False`` builds the plain net of the paper's Fig. 6 (the
same layers, no shortcut at all). ``dims=1`` swaps in 1-D convolutions for sequences such as
MNIST-1D ``(N, 1, 40)``.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn
from typing_extensions import Unpack

from skipkit.merges import Add
from skipkit.models._blocks import BATCHNORM, CONV, GLOBAL_AVGPOOL, check_dims, he_init
from skipkit.models._registry import register_model
from skipkit.shortcuts import ZeroPad, parse_shortcut_kind
from skipkit.skips import SkipModule

_OPTIONS = ("pad", "project")


class _CifarLayers(nn.Module):
    """The branch of a CIFAR block: ``conv3×3(stride) ─ BN ─ ReLU ─ conv3×3 ─ BN``.

    ``(N, C_in, *S) -> (N, C_out, *ceil(S / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dims: int = 2) -> None:
        super().__init__()
        conv, norm = CONV[dims], BATCHNORM[dims]
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class CifarBlock(_CifarLayers, SkipModule):
    """He et al. 2015 CIFAR block: ``ReLU(branch(x) + shortcut(x))``.

    ``(N, C_in, *S) -> (N, C_out, *ceil(S / stride))``. ``shortcut`` is ``nn.Identity`` when
    the shape is kept, else a :class:`~skipkit.shortcuts.ZeroPad` (option A) or a
    1×1 conv + BN (option B). ``skip=False`` builds the plain twin ``ReLU(branch(x))``: the
    skip off for good and no shortcut weights (the same function as ``skip_enabled = False``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dims: int = 2,
        *,
        option: str = "pad",
        skip: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, stride, dims)
        self.option = parse_shortcut_kind(option, allowed=_OPTIONS, owner="CIFAR ResNet shortcut")
        self.shortcut: nn.Module = nn.Identity()
        self.merge = Add()
        self.post = self.relu
        self.skip_enabled = skip
        if skip and (stride != 1 or in_channels != out_channels):
            if self.option == "pad":
                self.shortcut = ZeroPad(in_channels, out_channels, stride=(stride,) * dims)
            else:
                self.shortcut = nn.Sequential(
                    CONV[dims](in_channels, out_channels, 1, stride=stride, bias=False),
                    BATCHNORM[dims](out_channels),
                )


class CifarResNet(nn.Module):
    """A CIFAR ResNet (or its plain twin) of depth ``6 * blocks_per_stage + 2``.

    ``(N, in_channels, *S) -> (N, num_classes)``; ``S`` is ``(H, W)`` for ``dims=2`` (32×32 in
    the paper) or ``(L,)`` for ``dims=1``. Submodules: ``conv1, bn1, relu, layer1..3,
    avgpool, fc``.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "pad",
        skip: bool = True,
        dims: int = 2,
        zero_init_last: bool = False,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        check_dims(type(self).__name__, dims)
        option = parse_shortcut_kind(shortcut, allowed=_OPTIONS, owner="CIFAR ResNet shortcut")
        self.depth = 6 * blocks_per_stage + 2
        self.skip, self.shortcut, self.dims = skip, option, dims
        self.conv1 = CONV[dims](in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = BATCHNORM[dims](widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        stages: list[nn.Sequential] = []
        for i, width in enumerate(widths):
            blocks: list[nn.Module] = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(CifarBlock(c_in, width, stride, dims, option=option, skip=skip))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = GLOBAL_AVGPOOL[dims](1)
        self.fc = nn.Linear(widths[-1], num_classes)
        he_init(self)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, _CifarLayers):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *S) -> (N, 64, *S/4)``: everything before the pool."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, 64) -> (N, num_classes)


def cifar_resnet(
    depth: int,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "pad",
    skip: bool = True,
    dims: int = 2,
    zero_init_last: bool = False,
) -> CifarResNet:
    """A CIFAR ResNet of any depth ``6n + 2`` (He et al. 2015, section 4.2).

    Args:
        depth: weighted layers, ``6n + 2`` (8, 14, 20, 26, 32, ...).
        num_classes: outputs of the final ``fc``.
        in_channels: input channels (3 for CIFAR, 1 for MNIST-1D with ``dims=1``).
        shortcut: ``"A"`` (zero-pad, parameter-free) or ``"B"`` (1×1 conv + BN projection)
            where a stage changes the shape; identity everywhere else.
        skip: ``False`` builds the plain twin (no shortcuts at all).
        dims: 2 for images ``(N, C, H, W)``, 1 for sequences ``(N, C, L)``.
        zero_init_last: start each block's last BN at zero so every block begins as the
            identity (Goyal et al. 2017).

    Raises:
        ValueError: ``depth`` is not ``6n + 2``, or an unknown ``shortcut`` or ``dims``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"cifar_resnet(depth={depth!r}): a CIFAR ResNet has 6n+2 layers (n >= 1 blocks per "
            "stage), e.g. 8, 14, 20, 26, 32, 44, 56, 110 or 1202"
        )
    return CifarResNet(
        (depth - 2) // 6,
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
        skip=skip,
        dims=dims,
        zero_init_last=zero_init_last,
    )


class CifarOptions(TypedDict, total=False):
    """Keyword options of the registered CIFAR ResNet builders (see :func:`cifar_resnet`)."""

    num_classes: int
    in_channels: int
    shortcut: str
    skip: bool
    dims: int
    zero_init_last: bool


@register_model
def resnet20(**kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M parameters); options as :func:`cifar_resnet`."""
    return cifar_resnet(20, **kwargs)


@register_model
def resnet32(**kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M parameters); options as :func:`cifar_resnet`."""
    return cifar_resnet(32, **kwargs)


@register_model
def resnet44(**kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-44 for CIFAR (0.66M parameters); options as :func:`cifar_resnet`."""
    return cifar_resnet(44, **kwargs)


@register_model
def resnet56(**kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M parameters); options as :func:`cifar_resnet`."""
    return cifar_resnet(56, **kwargs)


@register_model
def resnet110(**kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-110 for CIFAR (1.7M parameters); options as :func:`cifar_resnet`."""
    return cifar_resnet(110, **kwargs)


@register_model
def resnet1202(**kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-1202 for CIFAR (19.4M parameters); options as :func:`cifar_resnet`."""
    return cifar_resnet(1202, **kwargs)


__all__ = [
    "CifarBlock",
    "CifarOptions",
    "CifarResNet",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet1202",
]
