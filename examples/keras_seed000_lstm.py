"""Seed 000, example 3: skip connections around LSTMs, with Keras 3.

The seed's ``lstm_layer_with_skip`` adds a 64-unit sequence to its 10-feature input.
``return_sequences=True`` keeps the time axis, and ``skipkit.keras.Residual`` projects the
features with a ``Dense`` on the last axis, so sequences of any length go through::

    x (N, T, 10) ─┬─ LSTM(64, return_sequences=True) ─┐
                  └─ Dense(64) shortcut ────────────── add ──> (N, T, 64)

A body that drops the time axis (``return_sequences=False``) raises ``ShapeMismatchError``
with the fix, instead of a broadcasting error deep in the backend.

Run: ``python examples/keras_seed000_lstm.py`` (the torch backend unless KERAS_BACKEND is set).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from skipkit.keras import Residual, ShapeMismatchError


def lstm_layer_with_skip(units: int) -> Residual:
    """``(N, T, F) -> (N, T, units)``: LSTM branch + ``Dense(units)`` skip (identity if equal)."""
    return Residual(keras.layers.LSTM(units, return_sequences=True))


def build_model() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input(shape=(None, 10)),  # variable-length sequences
            lstm_layer_with_skip(64),
            lstm_layer_with_skip(128),
            keras.layers.LSTM(1, return_sequences=False),  # one value per sequence
        ]
    )


def main(epochs: int = 2, samples: int = 128) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model()
    model.summary()
    assert [tuple(layer.output.shape) for layer in model.layers] == [
        (None, None, 64),
        (None, None, 128),
        (None, 1),
    ]
    rng = np.random.default_rng(0)
    for steps in (12, 5):
        seqs = rng.normal(size=(3, steps, 10)).astype("float32")
        assert model.predict(seqs, verbose=0).shape == (3, 1)

    try:
        Residual(keras.layers.LSTM(64))(keras.Input(shape=(None, 10)))
    except ShapeMismatchError as err:
        print(f"as expected: {err}")
    else:
        raise AssertionError("an LSTM without return_sequences cannot be skipped")

    # A toy task: the mean of the first feature over time.
    x = rng.normal(size=(samples, 12, 10)).astype("float32")
    y = x[:, :, :1].mean(axis=1)
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    print(f"loss {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
    return model


if __name__ == "__main__":
    main()
