"""Experiments that train networks and report what skip connections change.

- :func:`run_degradation`: plain vs residual twins at several depths (He et al. 2015).
- :mod:`skipkit.experiments.report`: the self-contained HTML report.
"""

from __future__ import annotations

from skipkit.experiments.degradation import (
    DegradationResult,
    ModelRun,
    build_model,
    check_depth,
    format_table,
    run_degradation,
)

__all__ = [
    "DegradationResult",
    "ModelRun",
    "build_model",
    "check_depth",
    "format_table",
    "run_degradation",
]
