"""Seed 003, ``SimpleBlockWithSkip``: ``fc1 -> ReLU -> fc2``, plus the input.

The tutorial's ``out + x`` only works when ``input_size == output_size``; ``Residual`` plans a
Linear projection otherwise. ``(N, 16) -> (N, 16)`` and ``(N, 16) -> (N, 8)``.
"""

import torch
from torch import nn

import skipkit as sk


def simple_block_with_skip(input_size: int, hidden_size: int, output_size: int) -> sk.Residual:
    body = nn.Sequential(
        nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, output_size)
    )
    return sk.Residual(body, in_shape=(1, input_size))


def main() -> None:
    same = simple_block_with_skip(16, 32, 16)
    x = torch.randn(4, 16)
    assert torch.equal(same(x), same.body(x) + x)  # exactly the tutorial's out + x
    other = simple_block_with_skip(16, 32, 8)
    y = other(x)
    assert y.shape == (4, 8), y.shape
    print(same.shortcut, other.shortcut, "->", tuple(y.shape))


if __name__ == "__main__":
    main()
