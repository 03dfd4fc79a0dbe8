"""Tensor layouts, shape inference on the ``meta`` device, and :class:`ShapeMismatchError`.

skipkit names three layouts:

- ``"NC"``  channels first: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ``(N, C, D, H, W)``
  (convolutional maps; the channel dim is 1).
- ``"NLC"`` features last: ``(N, T, F)`` sequences (Linear, RNN, attention; the feature dim is
  -1).
- ``"NF"``  flat feature vectors ``(N, F)``, where both conventions coincide.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

# Re-exported: the errors live in the torch-free skipkit.errors.
from skipkit.errors import ShapeMismatchError as ShapeMismatchError
from skipkit.errors import fmt_shape as fmt_shape

Layout = Literal["NC", "NLC", "NF"]

_LAYOUT_ALIASES: dict[str, Layout] = {
    "nc": "NC",
    "channels_first": "NC",
    "ncl": "NC",
    "nchw": "NC",
    "ncdhw": "NC",
    "nlc": "NLC",
    "ntf": "NLC",
    "features_last": "NLC",
    "nf": "NF",
}

_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Upsample,
    nn.PixelShuffle,
)
_FEATURES_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.RNNBase,
    nn.MultiheadAttention,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.Embedding,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def normalize_layout(layout: str | None) -> Layout | None:
    """Resolve a layout name or alias (``"NC"``, ``"channels_first"``, ``"NLC"``, …)."""
    if layout is None:
        return None
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a string or None, got {type(layout).__name__}")
    key = layout.lower()
    if key == "channels_last":
        # renamed: torch's channels_last is a memory format, not where the features are
        raise ValueError(
            "layout='channels_last' is no longer accepted: it read as torch's channels_last "
            "memory format. Use layout='NLC' (alias 'features_last') for features-last "
            "tensors (N, ..., C); a channels_last memory format needs no layout at all"
        )
    if key not in _LAYOUT_ALIASES:
        raise ValueError(
            f"unknown layout {layout!r}; use 'NC' (channels first), 'NLC' (features last) "
            "or 'NF' (flat vectors)"
        )
    return _LAYOUT_ALIASES[key]


def infer_layout(module: nn.Module) -> Layout | None:
    """Guess a module's layout from the first layer that fixes it, or ``None`` if none does.

    Convolutions, pooling and 2D/3D norms mean channels first; Linear, RNN, attention and
    LayerNorm mean features last. ``BatchNorm1d`` and activations say nothing.
    """
    for m in module.modules():
        if isinstance(m, _CHANNELS_FIRST):
            return "NC"
        if isinstance(m, _FEATURES_LAST):
            return "NLC"
    return None


def resolve_layout(layout: Layout | None, ndim: int) -> Layout:
    """The layout to plan with: ``NF`` for rank 2, else the given one, else channels first."""
    if ndim == 2:
        return "NF"
    return layout if layout not in (None, "NF") else "NC"


def channel_dim(layout: Layout, ndim: int) -> int:
    """Index (non-negative) of the channel / feature dim for a tensor of rank ``ndim``."""
    return ndim - 1 if layout == "NLC" else 1


def has_uninitialized_params(module: nn.Module) -> bool:
    """True when the module holds lazy (not yet shaped) parameters or buffers."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return any(isinstance(t, nn.parameter.UninitializedTensorMixin) for t in tensors)  # type: ignore[attr-defined]


def meta_forward(module: nn.Module, *inputs: torch.Tensor) -> object:
    """Run ``module`` on ``meta`` copies of its weights and of ``inputs``.

    No real compute and no memory: only shapes propagate. The module runs in eval mode (so a
    batch of one passes BatchNorm); its own tensors, buffers and train/eval flags are untouched.

    Raises:
        NotImplementedError: an operator in the module has no meta kernel.
        RuntimeError: the module cannot take these input shapes.
    """
    named = itertools.chain(module.named_parameters(), module.named_buffers())
    state = {k: torch.empty_like(v, device="meta") for k, v in named}
    meta_inputs = tuple(torch.empty_like(x, device="meta") for x in inputs)
    # Eval mode: shapes are the same, and train-mode BatchNorm would reject a batch of one.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        return functional_call(module, state, meta_inputs, strict=False)
    finally:
        for m, training in modes:
            m.training = training


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name`` (for "did you mean")."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
