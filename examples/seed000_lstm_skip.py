"""Seed 000, example 3 (LSTM skips with full output sequences), in PyTorch with skipkit.

``(N, T, 10) -> (N, 1)``. ``Residual`` around an ``nn.LSTM`` merges the output sequence with a
Linear projection of the input (10 -> 64, then 64 -> 128) and passes the LSTM state along.
"""

import torch
from torch import nn

import skipkit as sk


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            sk.Residual(nn.LSTM(10, 64, batch_first=True), in_shape=(1, 5, 10)),
            sk.Residual(nn.LSTM(64, 128, batch_first=True), in_shape=(1, 5, 64)),
        )
        self.head = nn.LSTM(128, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _state = self.layers(x)  # (N, T, 128)
        _, (h, _) = self.head(seq)  # h: (1, N, 1), the last hidden state
        return h[0]


def main() -> None:
    model = Model()
    for steps in (7, 23):  # variable-length sequences, as the tutorial's Input(shape=(None, 10))
        y = model(torch.randn(3, steps, 10))
        assert y.shape == (3, 1), y.shape
    print(model.layers[0].shortcut, "->", tuple(y.shape))


if __name__ == "__main__":
    main()
