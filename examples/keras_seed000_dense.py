"""Seed 000, example 1: skip connections in a fully connected network, with Keras 3.

The seed's ``fc_layer_with_skip`` adds a 64-unit output to its 10-feature input (shapes
``(None, 64)`` and ``(None, 10)`` cannot be added) and calls the layers without an input
inside ``Sequential``. ``skipkit.keras.Residual`` is a layer, so it goes straight into
``Sequential``, and it plans a ``Dense`` projection for the skip when the widths differ::

    x (N, 10) ─┬─ Dense(64, relu) ─────┐
               └─ Dense(64) shortcut ── add ──> (N, 64)

Run: ``python examples/keras_seed000_dense.py`` (the torch backend unless KERAS_BACKEND is set).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from skipkit.keras import Residual


def fc_layer_with_skip(units: int, activation: str = "relu") -> Residual:
    """``(N, F) -> (N, units)``: ``Dense(units, activation)(x) + shortcut(x)``."""
    return Residual(keras.layers.Dense(units, activation=activation))


def build_model() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input(shape=(10,)),
            fc_layer_with_skip(64),  # (N, 10) -> (N, 64), Dense(64) shortcut
            fc_layer_with_skip(128),  # (N, 64) -> (N, 128), Dense(128) shortcut
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def main(epochs: int = 3, samples: int = 256) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model()
    model.summary()
    assert [tuple(layer.output.shape) for layer in model.layers] == [
        (None, 64),
        (None, 128),
        (None, 1),
    ]
    assert model.layers[0].shortcut.units == 64
    assert model.layers[1].shortcut.units == 128

    # A toy task: is the sum of the first three features positive?
    x = np.random.default_rng(0).normal(size=(samples, 10)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("float32")[:, None]
    assert model.predict(x[:5], verbose=0).shape == (5, 1)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    print(f"loss {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
    return model


if __name__ == "__main__":
    main()
