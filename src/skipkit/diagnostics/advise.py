"""Where a skip belongs: a placement advisor built on gradient flow and activation statistics.

One forward/backward pass over a batch (see :func:`~skipkit.diagnostics.gradient_flow`) gives,
per main-path weight layer ``l`` (depth order), the **gradient signal**

    s_l = log10(‖∂L/∂W_l‖ · ‖W_l‖)

which, unlike ``‖∂L/∂W_l‖`` alone, does not change when a layer followed by normalization
rescales its weights; it measures how strongly the loss pulls on the layer *relative to its
size*. In a healthy net it stays within a decade or so across depth. Three findings lead to
suggestions:

1. **Gradient decay or growth across a span.** The span of consecutive layers over which
   ``s`` changes fastest (a maximum-sum run of per-layer changes beyond ``min_rate`` decades)
   is unhealthy when ``s`` changes by ``min_decades`` or more across it: vanishing gradients
   (``s`` falls towards the input; deep nets without normalization) or exploding ones (``s``
   rises towards the input; batch norm in deep plain nets, Yang et al. 2019).
2. **Rank collapse.** The effective rank of the per-example outputs (``(N, D)`` matrix) falls
   below ``rank_drop`` times its earlier maximum: the examples' representations merge.
3. **Downsampling bottlenecks.** A map squeezed (stride, pooling) and later expanded back
   (transposed conv, upsampling) loses detail on the way: a long skip from before the squeeze
   to the matching resolution after it, merged by concatenation (U-Net).

For (1) and (2) the *stages* of the main path that the unhealthy spans touch (runs of layers
joined by parameter-free modules, a new stage at every downsampling layer) are tiled with
residual skips around ``block`` layers each (He et al.'s basic block: two), from the tensor
that feeds the block's first layer to the normalization after its last layer (the sum comes
before the activation, as in ResNets). A block that changes the shape gets ``shortcut="auto"``,
which :func:`skipkit.add_skip` turns into a strided 1×1 conv + BN.

    >>> tips = advise(plain_net, (x, y), nn.CrossEntropyLoss())
    >>> for t in tips: print(t.src, "->", t.dst, t.reason)
    >>> net = apply(plain_net, tips, example=x)       # a skipkit.surgery.Grafted wrapper
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from skipkit.diagnostics._advise_chain import _units
from skipkit.diagnostics._advise_rules import (
    Suggestion,
    _gradient_spans,
    _long_skips,
    _rank_collapse,
    _tile,
)
from skipkit.diagnostics._probe import Batch
from skipkit.diagnostics.gradflow import GradientFlow, measure
from skipkit.surgery import SurgeryModule, add_skip

log = logging.getLogger(__name__)

__all__ = ["Suggestion", "advise", "advise_with_flow", "apply"]

LossFn = Callable[..., torch.Tensor]


def advise(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    block: int = 2,
    min_decades: float = 1.5,
    min_rate: float = 0.02,
    rank_drop: float = 0.5,
    max_suggestions: int | None = None,
) -> list[Suggestion]:
    """Propose skips for ``model`` from one measured forward/backward pass.

    Args:
        model: the network (left unchanged: see :func:`~skipkit.diagnostics.gradient_flow`).
        batch: ``(x, y)`` or ``x`` as in :func:`~skipkit.diagnostics.gradient_flow`; use a
            real batch of a few dozen examples or more (the ranks need examples).
        loss_fn: the training loss, e.g. ``nn.CrossEntropyLoss()``.
        block: weight layers per residual skip.
        min_decades: the gradient-signal change (in powers of ten) across a span that makes
            it unhealthy.
        min_rate: per-layer change (decades) below which a layer does not extend a span.
        rank_drop: a layer whose effective rank is below this fraction of the largest rank
            before it marks a collapse.
        max_suggestions: keep only the highest-scoring ones.

    Returns:
        Suggestions in forward order (empty for a healthy model).
    """
    tips, _ = advise_with_flow(
        model,
        batch,
        loss_fn,
        block=block,
        min_decades=min_decades,
        min_rate=min_rate,
        rank_drop=rank_drop,
        max_suggestions=max_suggestions,
    )
    return tips


def advise_with_flow(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    block: int = 2,
    min_decades: float = 1.5,
    min_rate: float = 0.02,
    rank_drop: float = 0.5,
    max_suggestions: int | None = None,
) -> tuple[list[Suggestion], GradientFlow]:
    """:func:`advise`, also returning the :class:`GradientFlow` it was based on."""
    if block < 1:
        raise ValueError(f"advise(block={block}) needs block >= 1")
    if min_decades <= 0 or min_rate < 0 or not 0 < rank_drop < 1:
        raise ValueError("advise needs min_decades > 0, min_rate >= 0 and 0 < rank_drop < 1")
    flow, probe = measure(model, batch, loss_fn, train=True, ranks=True, trace=True, name=None)
    units = _units(probe, flow)
    prefix = _host_prefix(model)
    tips: list[Suggestion] = []
    bad: dict[int, str] = {}
    for a, b, text in _gradient_spans(units, min_decades=min_decades, min_rate=min_rate):
        for k in range(a, b + 1):
            bad.setdefault(k, text)
    for a, b, text in _rank_collapse(units, rank_drop=rank_drop, batch=_batch_size(batch)):
        for k in range(a, b + 1):
            bad.setdefault(k, text)
    if bad:
        tips += _tile(units, bad, block=block)
    tips += _long_skips(units)
    for t in tips:
        t.src, t.dst = _strip(t.src, prefix), _strip(t.dst, prefix)
    if max_suggestions is not None and len(tips) > max_suggestions:
        keep = sorted(tips, key=lambda t: -t.score)[:max_suggestions]
        tips = [t for t in tips if t in keep]
    log.info("advise: %d suggestion(s) for %s", len(tips), type(model).__name__)
    return tips, flow


def apply(
    model: nn.Module,
    suggestions: Sequence[Suggestion],
    example: Any,
    *,
    zero_init: bool = False,
) -> nn.Module:
    """Add the suggested skips with :func:`skipkit.add_skip`.

    Args:
        model: the model the suggestions were made for (not modified).
        suggestions: from :func:`advise`.
        example: an input for ``model`` (shapes and order are checked with it).
        zero_init: start every new skip at zero, so a *trained* model computes exactly its old
            function at step 0. Off by default: the advice is for a model about to be trained,
            and a zero skip carries no gradient until its gain has grown.

    Returns:
        A :class:`skipkit.surgery.Grafted` wrapper (``model`` itself when there is nothing to
        add).
    """
    net = model
    for s in suggestions:
        net = add_skip(
            net,
            s.src,
            s.dst,
            merge=s.merge,
            shortcut=s.shortcut,
            example=example,
            zero_init=zero_init,
        )
    return net


def _batch_size(batch: Batch) -> int:
    x = batch if isinstance(batch, torch.Tensor) else batch[0]
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 0


def _host_prefix(model: nn.Module) -> str:
    """Paths of a surgery wrapper's suggestions are relative to the model it wraps."""
    if isinstance(model, SurgeryModule):
        host = model.host()
        for name, m in model.named_modules():
            if m is host:
                return name
    return ""


def _strip(path: str, prefix: str) -> str:
    if prefix and path.startswith(prefix + "."):
        return path[len(prefix) + 1 :]
    return path
