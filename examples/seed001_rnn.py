"""Seed 001, ``SkipConnectionRNN``: the LSTM's last hidden state, projected, is appended to its
output sequence — a concat skip along the time axis.

``(1, 100, 10) -> (1, 101, 10)``. The tutorial concatenates a 20-feature sequence with a
10-feature vector, which fails; here the last step keeps the hidden width and one Linear maps
the joined sequence back to the input size.
"""

import torch
from torch import nn

import skipkit as sk


class LastStep(nn.Module):
    """``(N, T, H) -> (N, 1, H)``: the last time step, through a Linear layer."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.proj(seq[:, -1:, :])


class SkipConnectionRNN(nn.Module):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        # skip: the whole output sequence; branch: its projected last step; joined on time.
        self.append_last = sk.Residual(
            LastStep(hidden_size), shortcut=nn.Identity(), merge=sk.Concat(dim=1)
        )
        self.to_input = nn.Linear(hidden_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # (N, T, H)
        return self.to_input(self.append_last(out))  # (N, 1 + T, H) -> (N, 1 + T, F)


def main() -> None:
    rnn = SkipConnectionRNN(input_size=10, hidden_size=20)
    y = rnn(torch.randn(1, 100, 10))
    assert y.shape == (1, 101, 10), y.shape
    print(tuple(y.shape))


if __name__ == "__main__":
    main()
