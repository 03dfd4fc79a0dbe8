"""The model registry: ``@register_model``, :func:`create`, :func:`list_models`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from skipkit.shapes import close_matches

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}


def register_model(fn: B | None = None, *, name: str | None = None) -> Any:
    """Register a model builder under its function name (or ``name``).

    Usable bare (``@register_model``) or with a name (``@register_model(name="resnet-d50")``).
    A name registered twice raises ``ValueError``.
    """

    def deco(f: B) -> B:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key]!r})")
        _REGISTRY[key] = f
        return f

    return deco(fn) if fn is not None else deco


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create("resnet20", num_classes=10)``.

    Raises:
        ValueError: unknown name (with close matches).
    """
    if name not in _REGISTRY:
        hint = close_matches(name, _REGISTRY)
        extra = (
            f"; did you mean {', '.join(hint)}?" if hint else "; see skipkit.models.list_models()"
        )
        raise ValueError(f"unknown model {name!r}{extra}")
    return _REGISTRY[name](**kwargs)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"resnet*"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _REGISTRY
