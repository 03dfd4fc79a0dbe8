"""Seed 001, ``SkipConnectionBlockConcat``: concatenate, then reduce with a 1x1 conv.

``(1, 64, 32, 32) -> (1, 128, 32, 32)``: the body gives 64 channels, concatenation with the
64 input channels gives 128, and ``Concat(out_channels=128)`` reduces them with a 1x1 conv.
"""

import torch
from torch import nn

import skipkit as sk


def skip_connection_block_concat(in_channels: int, out_channels: int) -> sk.Residual:
    body = nn.Sequential(
        nn.Conv2d(in_channels, out_channels // 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_channels // 2, out_channels // 2, 3, padding=1),
    )
    return sk.Residual(body, merge=sk.Concat(out_channels), post="relu")


def main() -> None:
    block = skip_connection_block_concat(64, 128)
    y = block(torch.randn(1, 64, 32, 32))
    assert y.shape == (1, 128, 32, 32), y.shape
    print(block.merge, "->", tuple(y.shape))


if __name__ == "__main__":
    main()
