"""Diagnostics: gradient flow, loss landscapes, and where a skip belongs.

Everything here returns data (dataclasses with ``to_dict()``); pictures come from
:mod:`skipkit.diagnostics.plot` (matplotlib, imported only when a plot is drawn).

- :func:`gradient_flow` — per-layer gradient and activation norms, per-skip branch/shortcut
  balance, from one backward pass; :class:`GradientFlowRecorder` records them while training.
- :func:`loss_landscape` / :func:`interpolate` — Li et al.'s filter-normalized loss surfaces
  and straight-line interpolation between two states (resumable, split over ``torchrun``).
- :func:`lesion` — Veit et al.'s lesion study: test error with skip blocks deleted.
- :func:`shattering` — Balduzzi et al.'s shattered gradients: the correlation of the input
  gradients of nearby inputs.
- :func:`advise` / :func:`apply` — where skips belong, and adding them with
  :func:`skipkit.add_skip`.
"""

from __future__ import annotations

from skipkit.diagnostics.advise import Suggestion, advise, apply
from skipkit.diagnostics.gradflow import (
    GradientFlow,
    GradientFlowRecorder,
    LayerFlow,
    SkipFlow,
    gradient_flow,
)
from skipkit.diagnostics.landscape import (
    Landscape,
    filter_normalize,
    interpolate,
    loss_landscape,
    random_direction,
)
from skipkit.diagnostics.lesion import BlockLesion, Lesion, SetLesion, lesion
from skipkit.diagnostics.plot import (
    plot_flow_in_time,
    plot_gradient_flow,
    plot_landscape,
    plot_landscapes,
    plot_lesion,
    plot_shattering,
)
from skipkit.diagnostics.shatter import Shattering, shattering

__all__ = [
    "BlockLesion",
    "GradientFlow",
    "GradientFlowRecorder",
    "Landscape",
    "LayerFlow",
    "Lesion",
    "SetLesion",
    "Shattering",
    "SkipFlow",
    "Suggestion",
    "advise",
    "apply",
    "filter_normalize",
    "gradient_flow",
    "interpolate",
    "lesion",
    "loss_landscape",
    "plot_flow_in_time",
    "plot_gradient_flow",
    "plot_landscape",
    "plot_landscapes",
    "plot_lesion",
    "plot_shattering",
    "random_direction",
    "shattering",
]
