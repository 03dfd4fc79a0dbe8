"""Seed 000, example 2: skip connections in a CNN with pooling, with Keras 3.

The seed's ``conv_layer_with_skip`` adds a 32-channel output to the 1-channel image and
calls layers without inputs inside ``Sequential``. Here each block is a
``skipkit.keras.Residual``: a 1x1 ``Conv2D`` shortcut matches the channels, and a block that
downsamples (the seed's note: where pooling loses information) gets a strided 1x1 shortcut,
odd sizes included::

    (N, 28, 28, 1)  ─ Residual(Conv2D 32)           1x1 conv shortcut ─> (N, 28, 28, 32)
                    ─ MaxPooling2D                                      ─> (N, 14, 14, 32)
                    ─ Residual(Conv2D 64)           1x1 conv shortcut ─> (N, 14, 14, 64)
                    ─ MaxPooling2D                                      ─> (N, 7, 7, 64)
                    ─ Residual(Conv2D 128, s=2)     1x1 conv, stride 2 ─> (N, 4, 4, 128)
                    ─ Flatten ─ Dense(10, softmax)                      ─> (N, 10)

Run: ``python examples/keras_seed000_cnn.py`` (the torch backend unless KERAS_BACKEND is set).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from skipkit.keras import Residual


def conv_layer_with_skip(
    filters: int, kernel_size: int | tuple[int, int], strides: int = 1, activation: str = "relu"
) -> Residual:
    """``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), filters)``: conv branch + 1x1 conv skip."""
    conv = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", activation=activation
    )
    return Residual(conv)


def build_model() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            conv_layer_with_skip(32, (3, 3)),
            keras.layers.MaxPooling2D((2, 2)),
            conv_layer_with_skip(64, (3, 3)),
            keras.layers.MaxPooling2D((2, 2)),
            conv_layer_with_skip(128, (3, 3), strides=2),  # 7x7 -> 4x4
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def main(epochs: int = 2, samples: int = 128) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model()
    model.summary()
    assert [tuple(layer.output.shape) for layer in model.layers] == [
        (None, 28, 28, 32),
        (None, 14, 14, 32),
        (None, 14, 14, 64),
        (None, 7, 7, 64),
        (None, 4, 4, 128),
        (None, 2048),
        (None, 10),
    ]
    assert model.layers[4].shortcut.strides == (2, 2)

    # A toy task: which of ten horizontal bands holds a bright stripe?
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=samples)
    images = rng.normal(scale=0.1, size=(samples, 28, 28, 1)).astype("float32")
    for i, band in enumerate(labels):
        images[i, 2 + 2 * band : 4 + 2 * band, :, 0] += 1.0
    assert model.predict(images[:3], verbose=0).shape == (3, 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    print(f"loss {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
    return model


if __name__ == "__main__":
    main()
