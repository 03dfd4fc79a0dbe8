"""DenseNets (Huang et al. 2017) built on :class:`skipkit.DenseBlock`, torchvision-compatible.

::

    x ─ stem ─ denseblock1 ─ transition1 ─ … ─ denseblockB ─ normB+1 ─ relu ─ avgpool ─ fc

Inside a dense block every layer sees the concatenation of the block input and all earlier
layers' outputs::

    x0 ──┬──────────────────┬──────────────────┬─ … ──> cat(x0, x1, …, xL)
         └─> layer1 ─> x1 ──┴─> layer2 ─> x2 ──┴─ …        (N, C + L*k, H, W)

    layer i: cat(x0, …, x(i-1)) (N, C + (i-1)*k, H, W) -> xi (N, k, H, W)

The ImageNet models (``densenet121/161/169/201``) have exactly torchvision's ``state_dict``
keys (``features.conv0``, ``features.denseblock1.denselayer1.norm1``, ``features.transition1``,
``features.norm5``, ``classifier``), so torchvision's weights load with ``strict=True`` and give
the same outputs. ``densenet_bc`` is the CIFAR DenseNet-BC (3 blocks, 3×3 stem, compression
0.5). Every builder accepts ``skip=False`` for the plain twin (see :class:`DenseNet`).
"""

from __future__ import annotations

import functools
import math
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from skipkit.dense import DenseBlock, DenseLayer
from skipkit.models._blocks import WeightsSpec, load_weights, read_state_dict
from skipkit.models._registry import register_model

__all__ = [
    "TORCHVISION_URLS",
    "DenseNet",
    "Transition",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "densenet_bc",
    "load_densenet_weights",
]

#: torchvision's published ImageNet weights (``IMAGENET1K_V1``); pass one as ``weights=``.
TORCHVISION_URLS: dict[str, str] = {
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "densenet161": "https://download.pytorch.org/models/densenet161-8d451a50.pth",
    "densenet169": "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
    "densenet201": "https://download.pytorch.org/models/densenet201-c1103571.pth",
}


class Transition(nn.Sequential):
    """Between two dense blocks: BN-ReLU-Conv1×1-AvgPool2.

    ``(N, C_in, H, W) -> (N, C_out, H // 2, W // 2)``; keys ``norm, relu, conv, pool`` as
    torchvision's ``_Transition``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_channels),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                pool=nn.AvgPool2d(2, stride=2),
            )
        )


class DenseNet(nn.Module):
    """DenseNet / DenseNet-BC classifier: ``(N, in_channels, H, W) -> (N, num_classes)``.

    Args:
        growth_rate: channels each dense layer adds (``k``).
        block_config: layers per dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
        num_init_features: channels out of the stem.
        bn_size: bottleneck width factor (the 1×1 conv gives ``bn_size * k`` channels).
        drop_rate: dropout after each dense layer.
        num_classes: classifier outputs.
        in_channels: input image channels.
        compression: transition width factor ``θ`` (``floor(θ·C)`` channels out); 0.5 for
            DenseNet-BC and torchvision's models.
        small_inputs: CIFAR stem (a single 3×3 conv, stride 1) instead of the ImageNet stem
            (7×7 conv stride 2, BN, ReLU, 3×3 max-pool stride 2).
        memory_efficient: keep one bottleneck tensor per dense layer for backward and
            recompute the concatenation and norms there (Pleiss et al. 2017; see
            :class:`~skipkit.DenseBlock`): the same outputs and BatchNorm statistics,
            gradients equal to float rounding, about 0.75x the peak training memory of
            torchvision's ``memory_efficient=True`` at 0.9x its step time
            (``docs/benchmarks.md``).
        skip: ``False`` builds the plain twin: every :class:`~skipkit.DenseBlock` gets
            ``skip_enabled = False`` for good, so each layer sees only the previous layer's
            output (zeros stand in for the earlier features, which keeps every weight's shape,
            so a ``state_dict`` moves freely between the twins; the zero channels only add a
            constant through ``norm1``'s shift, a bias). Setting the flag back on a block
            re-enables its skips.

    Module tree (``B = len(block_config)``): ``features.{conv0, [norm0, relu0, pool0],
    denseblock1, transition1, …, denseblockB, normB+1}`` and ``classifier``.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        compression: float = 0.5,
        small_inputs: bool = False,
        memory_efficient: bool = False,
        skip: bool = True,
    ) -> None:
        super().__init__()
        if growth_rate < 1 or num_init_features < 1 or bn_size < 1:
            raise ValueError(
                f"DenseNet needs positive growth_rate, num_init_features and bn_size, got "
                f"{growth_rate}, {num_init_features}, {bn_size}"
            )
        if not block_config or any(n < 1 for n in block_config):
            raise ValueError(
                f"DenseNet block_config={tuple(block_config)} needs at least one block and "
                "at least one layer per block"
            )
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"DenseNet compression={compression} must be in (0, 1]")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DenseNet drop_rate={drop_rate} must be in [0, 1)")

        stem: list[tuple[str, nn.Module]]
        if small_inputs:
            stem = [("conv0", nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False))]
        else:
            stem = [
                ("conv0", nn.Conv2d(in_channels, num_init_features, 7, 2, 3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
            ]
        self.features = nn.Sequential(OrderedDict(stem))

        # A partial of a class (not a lambda) keeps the model picklable.
        make_layer = functools.partial(DenseLayer, bn_size=bn_size, drop_rate=drop_rate)
        channels = num_init_features
        for i, num_layers in enumerate(block_config, start=1):
            block = DenseBlock(
                make_layer, num_layers, growth_rate, memory_efficient, in_channels=channels
            )
            block.skip_enabled = skip
            self.features.add_module(f"denseblock{i}", block)
            channels += num_layers * growth_rate
            if i < len(block_config):
                out = math.floor(channels * compression)
                self.features.add_module(f"transition{i}", Transition(channels, out))
                channels = out
        self.features.add_module(f"norm{len(block_config) + 1}", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        self.num_features = channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def memory_efficient(self) -> bool:
        """Whether the dense blocks recompute their bottlenecks in backward."""
        return all(b.memory_efficient for b in self.blocks())

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        for b in self.blocks():
            b.memory_efficient = bool(value)

    def blocks(self) -> list[DenseBlock]:
        """The dense blocks, in order."""
        return [m for m in self.features if isinstance(m, DenseBlock)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, num_features, H', W')`` after the last norm and ReLU
        (``H' = H / 32`` for the ImageNet stem, ``H / 4`` for ``densenet_bc``)."""
        return F.relu(self.features(x), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_features(x)  # (N, C, H', W')
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (N, C)
        logits: torch.Tensor = self.classifier(out)
        return logits


# torchvision's published ImageNet files predate its current module names: a dense layer's
# "norm.1.weight" is "norm1.weight" today, "conv.2.weight" is "conv2.weight".
_LEGACY_KEY = re.compile(r"^(.*\.denselayer\d+\.(?:norm|conv))\.([12])\.(.+)$")


def load_densenet_weights(
    model: nn.Module, weights: WeightsSpec, *, progress: bool = False
) -> nn.Module:
    """Load ``weights`` into ``model`` (``strict=True``) and return ``model``.

    ``weights`` is a local ``.safetensors`` file, a torch checkpoint (read with
    ``weights_only=True``), an http(s) URL (cached by ``torch.hub``) or a ``state_dict``.
    skipkit and torchvision checkpoints both fit, including torchvision's published ImageNet
    files (:data:`TORCHVISION_URLS`) with their legacy ``norm.1``-style keys, renamed here. A
    classifier of another size than the model's stays freshly initialised (fine-tuning).
    """
    state = {}
    for key, value in read_state_dict(weights, progress=progress).items():
        match = _LEGACY_KEY.match(key)
        state[f"{match[1]}{match[2]}.{match[3]}" if match else key] = value
    return load_weights(model, state, reinit=("classifier.",))


def _imagenet_densenet(
    name: str,
    growth_rate: int,
    block_config: tuple[int, ...],
    num_init_features: int,
    *,
    num_classes: int,
    in_channels: int,
    memory_efficient: bool,
    drop_rate: float,
    skip: bool,
    weights: WeightsSpec | None,
    progress: bool,
) -> DenseNet:
    model = DenseNet(
        growth_rate,
        block_config,
        num_init_features,
        drop_rate=drop_rate,
        num_classes=num_classes,
        in_channels=in_channels,
        memory_efficient=memory_efficient,
        skip=skip,
    )
    if weights is not None:
        load_densenet_weights(model, weights, progress=progress)
    return model


@register_model
def densenet121(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    memory_efficient: bool = False,
    drop_rate: float = 0.0,
    skip: bool = True,
    weights: WeightsSpec | None = None,
    progress: bool = False,
) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16, 8.0M parameters).

    ``(N, in_channels, H, W) -> (N, num_classes)``; the same ``state_dict`` keys and outputs
    as ``torchvision.models.densenet121``.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        memory_efficient: recompute concatenations and bottlenecks in backward (Pleiss et al.
            2017): same outputs and BatchNorm statistics, gradients to float rounding.
        drop_rate: dropout after each dense layer.
        skip: ``False`` builds the plain twin (see :class:`DenseNet`).
        weights: a local ``.safetensors`` file or torch checkpoint, an http(s) URL (downloaded
            into the torch.hub cache; e.g. ``TORCHVISION_URLS["densenet121"]``, torchvision's
            ImageNet weights) or a ``state_dict``; read without unpickling code and loaded
            with :func:`load_densenet_weights`.
        progress: show a download progress bar.
    """
    return _imagenet_densenet(
        "densenet121",
        32,
        (6, 12, 24, 16),
        64,
        num_classes=num_classes,
        in_channels=in_channels,
        memory_efficient=memory_efficient,
        drop_rate=drop_rate,
        skip=skip,
        weights=weights,
        progress=progress,
    )


@register_model
def densenet161(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    memory_efficient: bool = False,
    drop_rate: float = 0.0,
    skip: bool = True,
    weights: WeightsSpec | None = None,
    progress: bool = False,
) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24, 96 stem channels, 28.7M parameters).

    Shapes, keys and arguments as :func:`densenet121` (torchvision's ``densenet161``).
    """
    return _imagenet_densenet(
        "densenet161",
        48,
        (6, 12, 36, 24),
        96,
        num_classes=num_classes,
        in_channels=in_channels,
        memory_efficient=memory_efficient,
        drop_rate=drop_rate,
        skip=skip,
        weights=weights,
        progress=progress,
    )


@register_model
def densenet169(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    memory_efficient: bool = False,
    drop_rate: float = 0.0,
    skip: bool = True,
    weights: WeightsSpec | None = None,
    progress: bool = False,
) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32, 14.1M parameters).

    Shapes, keys and arguments as :func:`densenet121` (torchvision's ``densenet169``).
    """
    return _imagenet_densenet(
        "densenet169",
        32,
        (6, 12, 32, 32),
        64,
        num_classes=num_classes,
        in_channels=in_channels,
        memory_efficient=memory_efficient,
        drop_rate=drop_rate,
        skip=skip,
        weights=weights,
        progress=progress,
    )


@register_model
def densenet201(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    memory_efficient: bool = False,
    drop_rate: float = 0.0,
    skip: bool = True,
    weights: WeightsSpec | None = None,
    progress: bool = False,
) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32, 20.0M parameters).

    Shapes, keys and arguments as :func:`densenet121` (torchvision's ``densenet201``).
    """
    return _imagenet_densenet(
        "densenet201",
        32,
        (6, 12, 48, 32),
        64,
        num_classes=num_classes,
        in_channels=in_channels,
        memory_efficient=memory_efficient,
        drop_rate=drop_rate,
        skip=skip,
        weights=weights,
        progress=progress,
    )


@register_model
def densenet_bc(
    depth: int = 100,
    growth_rate: int = 12,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    memory_efficient: bool = False,
    drop_rate: float = 0.0,
    skip: bool = True,
    weights: WeightsSpec | None = None,
    progress: bool = False,
) -> DenseNet:
    """CIFAR DenseNet-BC (Huang et al. 2017, section 3): ``(N, C, 32, 32) -> (N, num_classes)``.

    A 3×3 stem conv with ``2k`` channels, three dense blocks of ``(depth - 4) / 6``
    bottleneck layers on 32², 16² and 8² maps, transitions with compression 0.5, BN-ReLU,
    global average pooling and a linear classifier. ``depth=100, growth_rate=12`` is the
    paper's 0.8M-parameter model (CIFAR-10+ error 4.51%); ``(250, 24)`` and ``(190, 40)`` are
    its larger ones.

    Args:
        depth: total depth ``L``; ``L - 4`` must be a positive multiple of 6.
        growth_rate: ``k``.
        num_classes: classifier outputs.
        in_channels: input image channels.
        memory_efficient, drop_rate, skip, weights, progress: as for :func:`densenet121`.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        lower = max(10, 4 + 6 * ((depth - 4) // 6))
        raise ValueError(
            f"densenet_bc(depth={depth}): DenseNet-BC has 3 blocks of (depth - 4) / 6 "
            f"bottleneck layers (2 convs each), so depth - 4 must be a positive multiple of 6; "
            f"the nearest valid depths are {sorted({lower, lower + 6})} (e.g. 40, 100, 190, 250)"
        )
    if growth_rate < 1:
        raise ValueError(f"densenet_bc(growth_rate={growth_rate}) must be positive")
    n = (depth - 4) // 6
    model = DenseNet(
        growth_rate,
        (n, n, n),
        2 * growth_rate,
        drop_rate=drop_rate,
        num_classes=num_classes,
        in_channels=in_channels,
        compression=0.5,
        small_inputs=True,
        memory_efficient=memory_efficient,
        skip=skip,
    )
    if weights is not None:
        load_densenet_weights(model, weights, progress=progress)
    return model
