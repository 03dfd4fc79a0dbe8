"""The model registry: ``@register_model``, :func:`create`, :func:`list_models`."""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typing_extensions
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
        TypeError: an option the builder does not take (with close matches and the list).
    """
    if name not in _REGISTRY:
        hint = close_matches(name, _REGISTRY)
        extra = (
            f"; did you mean {', '.join(hint)}?" if hint else "; see skipkit.models.list_models()"
        )
        raise ValueError(f"unknown model {name!r}{extra}")
    builder = _REGISTRY[name]
    options = builder_options(builder)
    unknown = [k for k in kwargs if options is not None and k not in options]
    if unknown and options is not None:
        hints = [m for k in unknown for m in close_matches(k, options)]
        did_you_mean = f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""
        raise TypeError(
            f"create({name!r}): unknown option {', '.join(map(repr, unknown))}{did_you_mean}. "
            f"{name} takes: {', '.join(options)}"
        )
    return builder(**kwargs)


def builder_options(builder: Builder) -> list[str] | None:
    """The keyword options a builder accepts, in order, or ``None`` when it takes any.

    Named parameters count, and so do the keys of a ``**kwargs: Unpack[SomeTypedDict]``
    (how the ResNet families share one option list); an untyped ``**kwargs`` accepts anything.
    """
    params = inspect.signature(builder).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var = next((p for p in params if p.kind is p.VAR_KEYWORD), None)
    if var is None:
        return names
    hint = typing.get_type_hints(builder, include_extras=True).get(var.name)
    if typing.get_origin(hint) is not typing_extensions.Unpack:
        return None
    (options,) = typing.get_args(hint)
    return names + list(typing.get_type_hints(options))


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"resnet*"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _REGISTRY
