"""Diagnostics: gradient flow, loss landscapes, and where a skip belongs.

Everything here returns data (dataclasses with ``to_dict()``); pictures come from
:mod:`skipkit.diagnostics.plot` (matplotlib, imported only when a plot is drawn).

- :func:`gradient_flow` — per-layer gradient and activation norms, per-skip branch/shortcut
  balance, from one backward pass; :class:`GradientFlowRecorder` records them while training.
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

__all__ = [
    "GradientFlow",
    "GradientFlowRecorder",
    "LayerFlow",
    "SkipFlow",
    "Suggestion",
    "advise",
    "apply",
    "gradient_flow",
]
