"""Seed 000, example 1 (fully connected skips), in PyTorch with skipkit.

The tutorial's ``fc_layer_with_skip`` adds a 64-unit output to a 10-feature input, which fails
on shapes. ``skipkit.Residual`` plans a Linear projection for the skip instead.
"""

import torch
from torch import nn

import skipkit as sk


def build() -> nn.Module:
    return nn.Sequential(
        sk.Residual(nn.Linear(10, 64), post="relu", in_shape=(1, 10)),  # skip: Linear(10, 64)
        sk.Residual(nn.Linear(64, 128), post="relu", in_shape=(1, 64)),  # skip: Linear(64, 128)
        nn.Linear(128, 1),
        nn.Sigmoid(),
    )


def main() -> None:
    model = build()
    y = model(torch.randn(8, 10))
    assert y.shape == (8, 1), y.shape
    print(model[0].shortcut, "->", tuple(y.shape))


if __name__ == "__main__":
    main()
