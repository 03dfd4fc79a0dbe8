"""Seed 001, ``SkipConnectionBlock``: two 3x3 convs, a 1x1 projection skip, add, ReLU.

The hand-written block needs its own ``skip_projection``; here it is planned from the shapes.
``(1, 64, 32, 32) -> (1, 128, 32, 32)``.
"""

import torch
from torch import nn

import skipkit as sk


def skip_connection_block(in_channels: int, out_channels: int) -> sk.Residual:
    body = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
    )
    return sk.Residual(body, shortcut="project", post="relu")


def main() -> None:
    block = skip_connection_block(64, 128)
    y = block(torch.randn(1, 64, 32, 32))
    assert y.shape == (1, 128, 32, 32), y.shape
    print(block.shortcut, "->", tuple(y.shape))


if __name__ == "__main__":
    main()
