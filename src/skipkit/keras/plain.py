"""The plain twin at run time: :func:`skips_disabled` switches every skip layer off.

Keras compiles ``model.predict`` / ``evaluate`` / ``fit`` into functions it keeps
(``model.predict_function``, …; ``tf.function`` on TensorFlow, ``jax.jit`` on JAX), and a skip
layer's on/off flag is Python, read once when such a function is traced. So switching the
flags is not enough: the kept functions of every model that traced a skip layer are dropped
on entry and on exit (as ``model.compile`` drops them), and Keras traces them again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TypeVar

import keras

from skipkit.keras._shapes import sublayers
from skipkit.keras._tracing import models_tracing
from skipkit.keras.dense import DenseBlock
from skipkit.keras.layers import Residual
from skipkit.keras.merges import Merge

log = logging.getLogger(__name__)

L = TypeVar("L", bound=keras.layers.Layer)
_SkipLayer = Residual | DenseBlock


def _skip_layers(root: keras.layers.Layer) -> list[_SkipLayer]:
    found = [layer for layer in sublayers(root) if isinstance(layer, (Residual, DenseBlock))]
    for layer in found:
        if isinstance(layer, Residual) and layer.merge is not None:
            if not isinstance(layer.merge, Merge):
                raise TypeError(
                    f"skips_disabled: {layer.name} merges with a "
                    f"{type(layer.merge).__name__}, whose plain twin is not known. Fix: build "
                    "it with a merge string or a skipkit.keras merge layer (merge='mul' for "
                    "keras.layers.Multiply, 'add' for keras.layers.Add)"
                )
    return found


def _models(root: keras.layers.Layer, layers: list[_SkipLayer]) -> list[keras.Model]:
    """The models in ``root`` and those that traced one of ``layers``."""
    models = [m for m in sublayers(root) if isinstance(m, keras.Model)]
    traced = (m for layer in layers for m in models_tracing(layer))
    return models + [m for m in traced if all(m is not k for k in models)]


def _forget_compiled(models: list[keras.Model]) -> None:
    """Drop the kept train / test / predict functions: the next call traces them again."""
    for model in models:
        model.train_function = None
        model.test_function = None
        model.predict_function = None


@contextlib.contextmanager
def skips_disabled(model_or_layer: L) -> Iterator[L]:
    """Switch every skipkit skip layer in ``model_or_layer`` off inside the ``with`` block.

    With the same weights, each :class:`~skipkit.keras.Residual`, :class:`~skipkit.keras.Highway`
    and :class:`~skipkit.keras.DenseBlock` then computes its plain twin: what the same block
    built with ``skip=False`` computes (``post(merge.without_skip(body(x)))``). The flags are
    restored on exit, also after an exception. Shapes do not change.

    It takes effect in eager calls (``model(x)``, ``layer(x)``) and in Keras' compiled
    ``model.predict`` / ``evaluate`` / ``fit``, also when they ran with the skips on before:
    the kept functions of ``model_or_layer``, of the models inside it, and of every model
    that traced one of its skip layers (a model holding a layer passed alone) are made again,
    once on entry and once on exit. A ``tf.function`` or ``jax.jit`` of your own around the
    model keeps what it traced: trace it again inside the block.

    Args:
        model_or_layer: a Keras model or layer; the skip layers are it and every layer in it.

    Yields:
        ``model_or_layer``.

    Raises:
        TypeError: ``model_or_layer`` is not a Keras layer, or a skip layer in it merges with
            a layer that is not one of skipkit's (its plain twin is not known).

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), Residual(keras.layers.Dense(8))])
        >>> with skips_disabled(model):
        ...     plain = model.predict(x, verbose=0)  # body(x): the skip's "x +" is gone
    """
    if not isinstance(model_or_layer, keras.layers.Layer):
        raise TypeError(
            "skips_disabled takes a Keras model or layer, got "
            f"{type(model_or_layer).__name__}; for a PyTorch model use skipkit.skips_disabled"
        )
    layers = _skip_layers(model_or_layer)
    saved = [(layer, layer.skip_enabled) for layer in layers]
    log.debug("skips_disabled: %d skip layers in %s", len(saved), model_or_layer.name)
    for layer, _ in saved:
        layer.skip_enabled = False
    _forget_compiled(_models(model_or_layer, layers))
    try:
        yield model_or_layer
    finally:
        for layer, flag in saved:
            layer.skip_enabled = flag
        # again, with the models that traced the skip layers inside the block
        _forget_compiled(_models(model_or_layer, layers))
