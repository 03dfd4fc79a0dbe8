"""Argument checks and (de)serialization shared by the Keras layers."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import keras

DATA_FORMATS = (None, "channels_last", "channels_first")

LayerLike: TypeAlias = "keras.layers.Layer | Sequence[keras.layers.Layer]"
PostLike: TypeAlias = "str | Callable[[Any], Any] | keras.layers.Layer | None"


def as_layer(obj: Any, what: str) -> keras.layers.Layer:
    """A layer, or a list of layers as a ``keras.Sequential``."""
    if isinstance(obj, keras.layers.Layer):
        return obj
    if (
        isinstance(obj, (list, tuple))
        and obj
        and all(isinstance(o, keras.layers.Layer) for o in obj)
    ):
        seq = keras.Sequential(list(obj))
        # Sequential passes a mask layer to layer but does not declare it; a skip's body keeps
        # its steps (checked at build), so the input mask stays valid on its output.
        seq.supports_masking = True
        return seq
    raise TypeError(
        f"{what} must be a Keras layer or a non-empty list of layers, got {type(obj).__name__}; "
        "wrap a plain function in a Layer subclass (or keras.layers.Activation)"
    )


def serialize(obj: Any) -> Any:
    """Layers as Keras configs; strings and ``None`` as they are."""
    if obj is None or isinstance(obj, str):
        return obj
    return keras.saving.serialize_keras_object(obj)


def deserialize(obj: Any) -> Any:
    """Inverse of :func:`serialize`."""
    if isinstance(obj, dict):
        return keras.saving.deserialize_keras_object(obj)
    return obj


def check_choice(value: Any, choices: Sequence[str], what: str) -> None:
    """A string ``value`` must be one of ``choices`` (layers pass unchecked)."""
    if isinstance(value, str) and value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")


def check_skip_flag(skip: Any, path: str) -> None:
    """``skip`` must be ``True`` or ``False`` (a string such as ``"no"`` would read as true)."""
    if not isinstance(skip, bool):
        raise TypeError(
            f"{path}: skip must be True or False, got {skip!r} ({type(skip).__name__}). Fix: "
            "skip=True (the default) for the skip connection, skip=False for its plain twin"
        )


def check_data_format(data_format: str | None) -> None:
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
        )


@functools.cache
def _takes_mask(cls: Any) -> bool:  # cls: a Layer subclass
    return "mask" in inspect.signature(cls.call).parameters


def call_masked(layer: keras.layers.Layer, x: Any, mask: Any) -> Any:
    """``layer(x, mask=mask)`` when the layer's ``call`` takes a mask (RNNs, attention,
    ``Sequential``), else ``layer(x)``: a skip passes its mask on as Keras' own layers do."""
    if mask is not None and _takes_mask(layer.__class__):
        return layer(x, mask=mask)
    return layer(x)


def activation_fn(name: str) -> Any:
    """A post activation by name: a registered function (``"package>name"``) or a Keras one."""
    found = keras.saving.get_registered_object(name)
    return name if found is None else found


def function_name(fn: Callable[[Any], Any], path: str) -> str:
    """The name under which ``fn`` round-trips through a ``.keras`` file.

    Raises:
        ValueError: ``fn`` is neither a Keras activation nor registered with
            ``keras.saving.register_keras_serializable``, so a loaded model could not find it.
    """
    name = keras.saving.get_registered_name(fn)
    if keras.saving.get_registered_object(name) is fn:
        return str(name)  # "package>name"
    bare = getattr(fn, "__name__", "")
    try:
        if keras.activations.get(bare) is fn:
            return str(bare)  # keras.activations.relu -> "relu"
    except ValueError:
        pass
    raise ValueError(
        f"{path}: post={bare or fn!r} is a plain function, which a .keras file cannot name, so "
        "the model cannot be saved. Fix: pass the Keras activation's name (post='relu'), or "
        "decorate the function with @keras.saving.register_keras_serializable()"
    )


def as_post(post: PostLike) -> keras.layers.Layer | None:
    """The layer applied after the merge: an ``Activation`` for a name or a function."""
    if post is None:
        return None
    if isinstance(post, str):
        return keras.layers.Activation(activation_fn(post), name="post")
    if isinstance(post, keras.layers.Layer) or isinstance(post, (list, tuple)):
        return as_layer(post, "post")
    if callable(post):
        return keras.layers.Activation(post, name="post")
    raise TypeError(
        "post must be an activation name, a function, a Keras layer or None, "
        f"got {type(post).__name__}"
    )
