"""The fused memory-efficient DenseNet layer behind :class:`skipkit.DenseBlock`.

:class:`DenseLayerFunction` runs a whole stock :class:`~skipkit.dense.DenseLayer` as one
autograd function that stores one ``bn_size*k``-channel tensor per layer and recomputes no
convolution in backward (:class:`~skipkit.DenseBlock` decides when it applies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:  # dense.py imports this module; the layer class is only a type here
    from skipkit.dense import DenseLayer

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BatchNorm = nn.modules.batchnorm._BatchNorm
_aten = torch.ops.aten


def _norms(layer: DenseLayer) -> tuple[_BatchNorm, _BatchNorm]:
    n1, n2 = layer.norm1, layer.norm2
    assert isinstance(n1, BATCH_NORMS) and isinstance(n2, BATCH_NORMS)
    return n1, n2


def _batch_norm_train(
    bn: _BatchNorm, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bn(x)`` in training mode, with ``nn.BatchNorm``'s running-statistics bookkeeping,
    also returning the batch mean and inverse standard deviation (per channel)."""
    factor = 0.0
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    out, mean, invstd = _aten.native_batch_norm(
        x, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, factor, bn.eps
    )
    return out, mean, invstd


def _normalize(
    bn: _BatchNorm, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor
) -> torch.Tensor:
    """``bn``'s training-mode output again from the saved batch statistics, with no pass to
    compute them (the inference kernel fed with ``var = 1/invstd**2 - eps``)."""
    var = invstd.double().pow(-2).sub(bn.eps).to(invstd.dtype)
    out: torch.Tensor = _aten.native_batch_norm(
        x, bn.weight, bn.bias, mean, var, False, 0.0, bn.eps
    )[0]
    return out


def _conv_backward(
    grad: torch.Tensor, x: torch.Tensor, conv: nn.Module, need_weight: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of a bias-free convolution with respect to its input and weight."""
    assert isinstance(conv, CONVS)
    grad_x, grad_w, _ = _aten.convolution_backward(
        grad,
        x,
        conv.weight,
        None,
        conv.stride,
        conv.padding,
        conv.dilation,
        False,
        [0] * (x.ndim - 2),
        conv.groups,
        [True, need_weight, False],
    )
    return grad_x, grad_w


class DenseLayerFunction(torch.autograd.Function):
    """A whole :class:`DenseLayer` (``cat -> norm1 -> relu1 -> conv1 -> norm2 -> relu2 ->
    conv2``) as one autograd function that saves a single new tensor: conv1's output ``z``
    (``bn_size*k`` channels; the input features are kept by the block anyway), plus the two
    norms' per-channel batch statistics.

    torchvision's checkpointed layer saves two such tensors (conv1's output and relu2's),
    recomputes norm1 in training mode (a second statistics pass, and a second update of its
    running statistics). Here backward rebuilds relu2's output from ``z`` and relu1's from
    ``cat(features)`` with the saved statistics (one elementwise pass each), then runs each
    op's backward kernel; no convolution and no statistics pass runs twice. Outputs and
    running statistics equal ``memory_efficient=False`` exactly on CPU; gradients agree to
    float rounding (the rebuilt activations may differ in the last bit).

    ``apply(layer, w1, b1, wc1, w2, b2, wc2, *features) -> (N, k, *S)``.
    """

    @staticmethod
    def forward(ctx: Any, layer: DenseLayer, *tensors: torch.Tensor) -> torch.Tensor:
        features = tensors[6:]
        n1, n2 = _norms(layer)
        a, mean1, invstd1 = _batch_norm_train(n1, torch.cat(features, 1))
        z = layer.conv1(torch.relu_(a))
        h, mean2, invstd2 = _batch_norm_train(n2, z)
        out: torch.Tensor = layer.conv2(torch.relu_(h))
        ctx.layer = layer
        ctx.save_for_backward(z, mean1, invstd1, mean2, invstd2, *features)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, mean1, invstd1, mean2, invstd2, *features = ctx.saved_tensors
        layer: DenseLayer = ctx.layer
        n1, n2 = _norms(layer)
        need_w1, need_b1, need_wc1, need_w2, need_b2, need_wc2 = ctx.needs_input_grad[1:7]
        need_feats = ctx.needs_input_grad[7:]

        h = torch.relu_(_normalize(n2, z, mean2, invstd2))
        grad_h, grad_wc2 = _conv_backward(grad_out, h, layer.conv2, need_wc2)
        grad_h = _aten.threshold_backward(grad_h, h, 0)
        del h
        grad_z, grad_w2, grad_b2 = _aten.native_batch_norm_backward(
            grad_h, z, n2.weight, None, None, mean2, invstd2, True, n2.eps, [True, need_w2, need_b2]
        )
        del grad_h

        cat = torch.cat(features, 1)
        r = torch.relu_(_normalize(n1, cat, mean1, invstd1))
        grad_r, grad_wc1 = _conv_backward(grad_z, r, layer.conv1, need_wc1)
        grad_r = _aten.threshold_backward(grad_r, r, 0)
        del r, grad_z
        grad_cat, grad_w1, grad_b1 = _aten.native_batch_norm_backward(
            grad_r,
            cat,
            n1.weight,
            None,
            None,
            mean1,
            invstd1,
            True,
            n1.eps,
            [any(need_feats), need_w1, need_b1],
        )
        feat_grads: list[torch.Tensor | None] = [None] * len(features)
        if grad_cat is not None:
            parts = grad_cat.split([f.shape[1] for f in features], 1)
            feat_grads = [g if n else None for g, n in zip(parts, need_feats, strict=True)]
        return (None, grad_w1, grad_b1, grad_wc1, grad_w2, grad_b2, grad_wc2, *feat_grads)


__all__ = ["BATCH_NORMS", "CONVS", "DenseLayerFunction"]
