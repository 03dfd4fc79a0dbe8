"""Fully connected and recurrent models: why skips matter at depth, and seed 001's RNN head.

A 50-layer plain tanh MLP loses its gradient before it reaches the first layer; the residual
and highway nets built from the same layers do not. Then a residual LSTM stack with seed 001's
head: the last hidden state, projected, appended to the output sequence.

    python examples/models_mlp_rnn.py
"""

import torch
import torch.nn.functional as F

from skipkit.models import create


def main() -> None:
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    for name in ("plain_mlp", "residual_mlp", "highway_mlp"):
        torch.manual_seed(0)
        model = create(name, in_features=20, out_features=5, depth=50, width=64, activation="tanh")
        F.cross_entropy(model(x), y).backward()
        grad = model.stem[0].weight.grad.norm().item()
        print(f"{name:<13} depth 50: gradient norm at the first layer {grad:.2e}")

    lstm = create("residual_lstm", input_size=10, hidden_size=20, num_layers=3, head="last_concat")
    seq = torch.randn(1, 100, 10)
    print("residual_lstm, head='last_concat':", tuple(seq.shape), "->", tuple(lstm(seq).shape))
    print("input projection of the first layer:", lstm.layers[0].shortcut)
    gru = create("residual_gru", input_size=10, hidden_size=20, num_classes=4)
    print("residual_gru classifier:", tuple(gru(seq).shape))


if __name__ == "__main__":
    main()
