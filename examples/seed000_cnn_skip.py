"""Seed 000, example 2 (convolutional skips with pooling), in PyTorch with skipkit.

``(N, 1, 28, 28) -> (N, 10)``. The first block goes 1 -> 32 channels, so the skip becomes a
1x1 conv + BatchNorm; the tutorial's Keras ``Add`` would fail there.
"""

import torch
from torch import nn

import skipkit as sk


def conv_skip(c_in: int, c_out: int) -> sk.Residual:
    # post=ReLU after the add, as the tutorial applies the activation to the sum's input.
    return sk.Residual(nn.Conv2d(c_in, c_out, 3, padding=1), post="relu", in_shape=(1, c_in, 8, 8))


def build() -> nn.Module:
    return nn.Sequential(
        conv_skip(1, 32),
        nn.MaxPool2d(2),
        conv_skip(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 10),
    )


def main() -> None:
    model = build()
    y = model(torch.randn(4, 1, 28, 28))
    assert y.shape == (4, 10), y.shape
    print(model[0].shortcut, "->", tuple(y.shape))


if __name__ == "__main__":
    main()
