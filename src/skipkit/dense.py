"""DenseNet blocks (Huang et al. 2017): :class:`DenseBlock`, :class:`DenseLayer`.

::

          ┌───────────────── shortcut (identity) ──────────────────┐
    x ──tap┤                                                        merge ──> cat([x, f1 … fL])
          └─ branch: f1 = L1(x), f2 = L2(cat[x, f1]), …, fL ───────┘

A dense block is one skip in the :class:`~skipkit.SkipModule` protocol: its branch computes the
new features (each layer sees the concatenation of everything before it), the merge
(:class:`DenseMerge`) puts the block's input in front of them. With the skip off (the plain
twin) every connection that skips a layer goes: each layer sees only the previous layer's
output, and the block passes on only its last layer's features (zeros elsewhere, so the same
weights fit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from skipkit._checks import check_positive_int, check_probability
from skipkit._dense_fused import BATCH_NORMS, CONVS, DenseLayerFunction
from skipkit.merges import Merge
from skipkit.shapes import (
    Layout,
    ShapeMismatchError,
    channel_dim,
    fmt_shape,
    normalize_layout,
    resolve_layout,
)
from skipkit.skips import SkipModule


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-Conv1×1 (``bn_size*growth``) then BN-ReLU-Conv3×3 (``growth``).

    ``(N, C_in, *S) -> (N, growth, *S)``. Submodule names follow torchvision's
    ``_DenseLayer`` (``norm1, relu1, conv1, norm2, relu2, conv2``) so weights are
    interchangeable. :meth:`bottleneck` is the part :class:`DenseBlock` recomputes in backward
    when ``memory_efficient=True``.
    """

    def __init__(
        self,
        in_channels: int,
        growth: int,
        *,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        dims: int = 2,
    ) -> None:
        super().__init__()
        conv: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
        norm: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
        if isinstance(dims, bool) or dims not in conv:
            raise ValueError(f"DenseLayer(dims={dims!r}) must be 1, 2 or 3")
        for name, value in (("in_channels", in_channels), ("growth", growth), ("bn_size", bn_size)):
            check_positive_int(f"DenseLayer({name})", value)
        check_probability("DenseLayer(drop_rate)", drop_rate)
        width = bn_size * growth
        self.norm1 = norm[dims](in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv[dims](in_channels, width, 1, bias=False)
        self.norm2 = norm[dims](width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv[dims](width, growth, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, *S) -> (N, bn_size*growth, *S)``: norm1, relu1, conv1, norm2, relu2."""
        return self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x)))))

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """``(N, bn_size*growth, *S) -> (N, growth, *S)``: conv2 and dropout."""
        out = self.conv2(h)
        if self.drop_rate > 0:
            out = nn.functional.dropout(out, p=self.drop_rate, training=self.training)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.bottleneck(x))


def _fusable(layer: nn.Module) -> bool:
    """Whether ``layer`` is a stock :class:`DenseLayer` that the fused
    :class:`~skipkit._dense_fused.DenseLayerFunction` computes exactly (affine BatchNorms,
    plain ReLUs, bias-free zero-padded convs)."""
    if type(layer) is not DenseLayer or not layer.training:
        return False
    norms, convs = (layer.norm1, layer.norm2), (layer.conv1, layer.conv2)
    return (
        all(type(n) in BATCH_NORMS and n.affine for n in norms)
        and all(type(r) is nn.ReLU for r in (layer.relu1, layer.relu2))
        and all(
            type(c) in CONVS
            and c.bias is None
            and c.padding_mode == "zeros"
            and not isinstance(c.padding, str)
            for c in convs
        )
    )


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm still normalizes with batch statistics but leaves its running statistics
    alone: a checkpointed segment run again in backward must not count the batch twice."""
    saved: list[tuple[nn.modules.batchnorm._BatchNorm, float | None, torch.Tensor]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            assert m.num_batches_tracked is not None
            m.num_batches_tracked.copy_(count)


class DenseMerge(Merge):
    """``cat([s, b], C)``: the block's input first, then the new features (torchvision's order).

    Shapes: ``(N, C, *S), (N, L*k, *S) -> (N, C + L*k, *S)``. Without the skip:
    ``cat([0, 0 … 0, b_last])``: only the last ``growth`` channels of the branch (the last
    layer's output) survive, because the others reach the output only through skips.

    Args:
        growth: channels each layer adds (``k``).
    """

    match_channels: ClassVar[bool] = False
    _formula = "cat([s, b], C)"

    def __init__(self, growth: int) -> None:
        super().__init__()
        self.growth = growth
        self.dim = 1
        self.skip_channels: int | None = None  # the block's input width, for without_skip

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        n = len(branch_shape)
        self.dim = channel_dim(resolve_layout(layout, n), n)
        self.skip_channels = int(skip_shape[self.dim])

    def setup_width(self, dim: int, skip_channels: int) -> None:
        """Like :meth:`setup`, from the concatenation dim and the block's input width."""
        self.dim, self.skip_channels = dim, skip_channels

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, branch], self.dim)

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        assert self.skip_channels is not None, "DenseMerge used before setup()"
        d = self.dim
        shape = list(branch.shape)
        shape[d] = self.skip_channels + branch.shape[d] - self.growth
        last = branch.narrow(d, branch.shape[d] - self.growth, self.growth)
        return torch.cat([branch.new_zeros(shape), last], d)

    def extra_repr(self) -> str:
        return f"growth={self.growth}, dim={self.dim}"


def _default_layer(dims: int) -> Callable[[int, int], nn.Module]:
    def make(in_channels: int, growth: int) -> nn.Module:
        return DenseLayer(in_channels, growth, dims=dims)

    return make


class DenseBlock(SkipModule):
    """DenseNet block (Huang et al. 2017): every layer sees the concatenation of all before.

    ``(N, C, *S) -> (N, C + num_layers*growth, *S)`` for 1-D, 2-D and 3-D maps (channels first;
    ``layout="NLC"`` concatenates on the last dim). See the module docstring for the parts.

    Args:
        make_layer: ``make_layer(in_channels, growth) -> nn.Module`` mapping
            ``(N, in_channels, *S) -> (N, growth, *S)``; :class:`DenseLayer` (with the input's
            number of spatial dims) by default. It is kept on the block, so pass a
            module-level function or a ``functools.partial`` (not a lambda) if the model must
            pickle. A layer of another width raises :class:`~skipkit.ShapeMismatchError`.
        num_layers: how many layers.
        growth: channels each layer adds (``k``).
        in_channels: input channels; when ``None`` the layers are built at the first forward
            (or from ``in_shape``).
        memory_efficient: do not store the concatenations for backward (Pleiss et al. 2017).
            A stock :class:`DenseLayer` (channels first, no autocast) runs as one autograd
            function that stores one ``bn_size*growth``-channel tensor per layer and
            recomputes no convolution; other layers are checkpointed (the concatenation and
            the layer recomputed in backward). Same outputs and BatchNorm statistics; feature
            memory linear in depth.
        in_shape: an example input shape (batch included), an alternative to
            ``in_channels``.
        layout: ``"NC"`` or ``"NLC"``.

    Layers are registered as ``denselayer1 … denselayerN`` (torchvision's names).
    """

    merge: DenseMerge

    def __init__(
        self,
        make_layer: Callable[[int, int], nn.Module] | None,
        num_layers: int,
        growth: int,
        memory_efficient: bool = False,
        *,
        in_channels: int | None = None,
        in_shape: Sequence[int] | None = None,
        layout: str | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("DenseBlock(num_layers)", num_layers)
        check_positive_int("DenseBlock(growth)", growth)
        if in_channels is not None:
            check_positive_int("DenseBlock(in_channels)", in_channels)
        if make_layer is not None and not callable(make_layer):
            raise TypeError(
                "DenseBlock(make_layer=...) must be a callable (in_channels, growth) -> "
                f"nn.Module or None, got {type(make_layer).__name__}"
            )
        self.make_layer = make_layer
        self.num_layers = num_layers
        self.growth = growth
        self.memory_efficient = bool(memory_efficient)
        self.layout: Layout | None = normalize_layout(layout)
        self.shortcut = nn.Identity()
        self.merge = DenseMerge(growth)
        self._dim = 1
        self._built = False
        self._spatial = 2
        if in_shape is not None:
            shape = tuple(int(s) for s in in_shape)
            lay = resolve_layout(self.layout, len(shape))
            self._dim = channel_dim(lay, len(shape))
            self._spatial = max(len(shape) - 2, 1)
            in_channels = shape[self._dim]
            check_positive_int("DenseBlock(in_shape) channels", in_channels)
        if in_channels is not None:
            self._build_layers(in_channels, None, None)

    @property
    def ready(self) -> bool:
        return self._built

    def _build_layers(
        self, in_channels: int, device: torch.device | None, dtype: torch.dtype | None
    ) -> None:
        make = self.make_layer or _default_layer(min(self._spatial, 3))
        for i in range(self.num_layers):
            layer = make(in_channels + i * self.growth, self.growth)
            if not isinstance(layer, nn.Module):
                raise TypeError(f"make_layer must return an nn.Module, got {type(layer).__name__}")
            layer.train(self.training)
            self.add_module(f"denselayer{i + 1}", layer.to(device=device, dtype=dtype))
        self.merge.setup_width(self._dim, in_channels)
        self._built = True

    def layers(self) -> list[nn.Module]:
        """The dense layers, in order."""
        return [m for name, m in self.named_children() if name.startswith("denselayer")]

    def _run_layer(self, layer: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        dim = self._dim
        grad = any(f.requires_grad for f in features)
        if self.memory_efficient and self.training and grad:
            if (
                dim == 1
                and _fusable(layer)
                and not torch.is_autocast_enabled(features[0].device.type)
            ):
                assert isinstance(layer, DenseLayer)
                params = [
                    layer.norm1.weight,
                    layer.norm1.bias,
                    layer.conv1.weight,
                    layer.norm2.weight,
                    layer.norm2.bias,
                    layer.conv2.weight,
                ]
                fused: torch.Tensor = DenseLayerFunction.apply(layer, *params, *features)
                if layer.drop_rate > 0:
                    fused = F.dropout(fused, p=layer.drop_rate, training=True)
                return fused
            return self._checkpointed(layer, features)
        out: torch.Tensor = layer(torch.cat(features, dim))
        return out

    def _checkpointed(self, layer: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        dim = self._dim
        recomputing = [False]

        def segment(*feats: torch.Tensor) -> torch.Tensor:
            cat = torch.cat(feats, dim)
            ctx = _frozen_batchnorm_stats(layer) if recomputing[0] else None
            recomputing[0] = True
            with ctx or contextlib.nullcontext():
                if isinstance(layer, DenseLayer):
                    return layer.bottleneck(cat)
                out: torch.Tensor = layer(cat)
                return out

        h = checkpoint(segment, *features, use_reentrant=False)
        assert isinstance(h, torch.Tensor)
        return layer.tail(h) if isinstance(layer, DenseLayer) else h

    def branch(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``(N, C, *S) -> (N, num_layers*growth, *S)``: the new features, in order."""
        if not self._built:
            lay = resolve_layout(self.layout, x.ndim)
            self._dim = channel_dim(lay, x.ndim)
            self._spatial = max(x.ndim - 2, 1)
            self._build_layers(
                x.shape[self._dim], x.device, x.dtype if x.is_floating_point() else None
            )
        if self.make_layer is None and self._dim == 1 and x.ndim != self._spatial + 2:
            raise ShapeMismatchError(
                f"the default dense layers were built for {self._spatial}-D maps "
                f"(N, C, {', '.join('S' * self._spatial)}) but the input is {x.ndim - 2}-D",
                path=self.path,
                fixes=["pass in_shape=<an input shape> instead of in_channels, or omit both"],
            )
        features = [x]
        for i, layer in enumerate(self.layers()):
            if self.skip_enabled:
                inputs = features
            else:  # the plain twin: each layer sees only the previous layer's output
                inputs = [torch.zeros_like(f) for f in features[:-1]] + [features[-1]]
            out = self._run_layer(layer, inputs)
            self._check_layer(i, x, out)
            features.append(out)
        return torch.cat(features[1:], self._dim)

    def _check_layer(self, i: int, x: torch.Tensor, out: torch.Tensor) -> None:
        d = self._dim
        if out.shape[:d] + out.shape[d + 1 :] == x.shape[:d] + x.shape[d + 1 :] and (
            out.shape[d] == self.growth
        ):
            return
        raise ShapeMismatchError(
            f"dense layer {i + 1} maps {fmt_shape(tuple(x.shape))} to "
            f"{fmt_shape(tuple(out.shape))}; a dense layer adds growth={self.growth} channels "
            "and keeps every other dim",
            path=self.path,
            branch_shape=tuple(out.shape),
            fixes=[f"make_layer(in_channels, growth) must return (N, {self.growth}, *S)"],
        )

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, growth={self.growth}, "
            f"memory_efficient={self.memory_efficient}"
        )


__all__ = ["DenseBlock", "DenseLayer", "DenseMerge"]
