"""Which Keras models have traced a skip layer into a compiled function.

A skip layer reads its on/off flag in Python, so ``tf.function`` and ``jax.jit`` bake the flag
into the function they trace, and Keras keeps that function (``model.predict_function``, …).
Each skip layer notes here, while being traced, the models whose methods are on the stack, so
:func:`skipkit.keras.skips_disabled` can make those functions again even when it is given one
layer of a model it cannot otherwise reach.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import keras

# The backend Keras was imported with, already loaded by Keras: no new dependency.
_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    import tensorflow as tf
elif _BACKEND == "jax":
    import jax

_TRACED_BY: weakref.WeakKeyDictionary[keras.layers.Layer, weakref.WeakSet[keras.Model]] = (
    weakref.WeakKeyDictionary()
)


def _traced(x: Any) -> bool:
    """``x`` is a placeholder of a function being traced (``tf.function``, ``jax.jit``)."""
    if _BACKEND == "tensorflow":
        return not tf.executing_eagerly()
    if _BACKEND == "jax":
        return isinstance(x, jax.core.Tracer)
    # torch: Keras runs predict / evaluate / fit eagerly unless jit_compile=True, whose
    # torch.compile guards on the flag and traces again when it changes
    return False


def note_trace(layer: keras.layers.Layer, x: Any) -> None:
    """Called by a skip layer's ``call`` on its input ``x``: remembers the models tracing it.

    A Keras shape inference (a symbolic call) is noted too; the cost is one extra trace of
    that model's functions at the next :func:`skipkit.keras.skips_disabled`.
    """
    if not _traced(x):
        return
    models = _TRACED_BY.setdefault(layer, weakref.WeakSet())
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.Model):
                models.add(owner)
            frame = frame.f_back
    finally:
        del frame  # a frame in a local keeps every frame above it alive


def models_tracing(layer: keras.layers.Layer) -> list[keras.Model]:
    """The live models whose methods were on the stack when ``layer`` was traced."""
    return list(_TRACED_BY.get(layer, ()))
