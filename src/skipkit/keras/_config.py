"""Argument checks and (de)serialization shared by the Keras layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import keras

DATA_FORMATS = (None, "channels_last", "channels_first")

LayerLike: TypeAlias = "keras.layers.Layer | Sequence[keras.layers.Layer]"


def as_layer(obj: Any, what: str) -> keras.layers.Layer:
    """A layer, or a list of layers as a ``keras.Sequential``."""
    if isinstance(obj, keras.layers.Layer):
        return obj
    if (
        isinstance(obj, (list, tuple))
        and obj
        and all(isinstance(o, keras.layers.Layer) for o in obj)
    ):
        return keras.Sequential(list(obj))
    raise TypeError(
        f"{what} must be a Keras layer or a non-empty list of layers, got {type(obj).__name__}; "
        "wrap a plain function in keras.layers.Lambda or a Layer subclass"
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


def check_data_format(data_format: str | None) -> None:
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
