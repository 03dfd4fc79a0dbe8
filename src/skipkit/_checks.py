"""Checks of the numeric arguments of the public constructors (pure Python).

Each returns the value, normalised, or raises ``TypeError`` (wrong type) / ``ValueError``
(out of range) naming the argument, the value and the allowed range.
"""

from __future__ import annotations

import math


def _number(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    return float(value)


def check_positive_int(name: str, value: object) -> int:
    """An ``int >= 1``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be an int >= 1")
    return value


def check_probability(name: str, value: object) -> float:
    """A number in ``[0, 1)``."""
    p = _number(name, value, "a number in [0, 1)")
    if not 0.0 <= p < 1.0:  # also refuses NaN
        raise ValueError(f"{name}={value} must be in [0, 1)")
    return p


def check_finite(name: str, value: object) -> float:
    """A finite number."""
    x = _number(name, value, "a finite number")
    if not math.isfinite(x):
        raise ValueError(f"{name}={value} must be a finite number")
    return x


__all__ = ["check_finite", "check_positive_int", "check_probability"]
