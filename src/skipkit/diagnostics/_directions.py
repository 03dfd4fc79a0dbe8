"""Directions in weight space for loss landscapes: Li et al.'s filter normalization.

Separate from the grid evaluation (:mod:`skipkit.diagnostics._landscape_scan`): a direction is
plain tensors computed from the weights, with no data, no model call and no checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["Direction", "filter_normalize", "random_direction"]

Direction = dict[str, torch.Tensor]
"""A direction in weight space: state-dict name -> tensor shaped like that entry. Names that
are absent do not move."""


def filter_normalize(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    *,
    include_bn: bool = False,
) -> Direction:
    """Li et al.'s filter normalization of ``direction`` against ``weights`` (a new dict).

    For each tensor of two or more dims, every slice along dim 0 is scaled to the norm of the
    matching slice of the weight: ``d_i · ‖w_i‖ / (‖d_i‖ + 1e-10)``. One-dim tensors become
    zero, or with ``include_bn`` are scaled as a whole: ``d · ‖w‖ / (‖d‖ + 1e-10)``.
    """
    out: Direction = {}
    for name, d in direction.items():
        w = weights[name].detach()
        if d.shape != w.shape:
            raise ValueError(
                f"direction {name!r} has shape {tuple(d.shape)}, the weight {tuple(w.shape)}"
            )
        if d.dim() <= 1:
            out[name] = d * (w.norm() / (d.norm() + 1e-10)) if include_bn else torch.zeros_like(d)
            continue
        dn = d.flatten(1).norm(dim=1)
        wn = w.flatten(1).norm(dim=1)
        out[name] = d * (wn / (dn + 1e-10)).view(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(
    model: nn.Module,
    *,
    seed: int = 0,
    include_bn: bool = False,
    generator: torch.Generator | None = None,
) -> Direction:
    """A filter-normalized Gaussian direction over ``model``'s parameters.

    The noise is drawn on the CPU in float32 from ``generator`` (or one seeded with ``seed``)
    in parameter order, so the same seed gives the same direction on every device and in every
    process. Returns ``{name: tensor}`` on the parameters' devices and dtypes.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    weights = dict(model.named_parameters())
    raw = {
        name: torch.randn(p.shape, generator=gen, dtype=torch.float32)
        for name, p in weights.items()
    }
    cpu_w = {n: p.detach().to("cpu", torch.float32) for n, p in weights.items()}
    normed = filter_normalize(raw, cpu_w, include_bn=include_bn)
    return {n: d.to(weights[n].device, weights[n].dtype) for n, d in normed.items()}
