"""Residual LSTM/GRU stacks: projection, heads (seed 001), plain twins, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.models import create
from skipkit.models.rnn import ResidualRNN

CELLS = {"residual_lstm": nn.LSTM, "residual_gru": nn.GRU}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_layers_and_input_projection(name: str) -> None:
    model = create(name, input_size=5, hidden_size=8, num_layers=3)
    assert isinstance(model, ResidualRNN)
    assert all(isinstance(layer, sk.Residual) for layer in model.layers)
    assert all(isinstance(layer.body, CELLS[name]) for layer in model.layers)
    first = model.layers[0].shortcut
    assert isinstance(first, nn.Linear) and (first.in_features, first.out_features) == (5, 8)
    assert all(isinstance(layer.shortcut, nn.Identity) for layer in model.layers[1:])
    same = create(name, input_size=8, hidden_size=8, num_layers=1)
    assert isinstance(same.layers[0].shortcut, nn.Identity)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_matches_a_hand_written_stack(name: str) -> None:
    model = create(name, input_size=5, hidden_size=8, num_layers=2)
    x = torch.randn(3, 7, 5)
    h = model.layers[0].body(x)[0] + model.layers[0].shortcut(x)  # projected skip
    h = model.layers[1].body(h)[0] + h  # identity skip
    torch.testing.assert_close(model(x), h)


@pytest.mark.parametrize(
    ("head", "num_classes", "shape"),
    [
        ("sequence", None, (2, 6, 8)),
        ("sequence", 4, (2, 6, 4)),
        ("last", None, (2, 8)),
        ("last", 4, (2, 4)),
        ("last_concat", None, (2, 7, 8)),
        ("last_concat", 4, (2, 7, 4)),
        (None, 4, (2, 4)),  # a classifier head reads the last step by default
        (None, None, (2, 6, 8)),
    ],
)
def test_heads(head: str | None, num_classes: int | None, shape: tuple[int, ...]) -> None:
    model = create(
        "residual_lstm",
        input_size=3,
        hidden_size=8,
        num_layers=2,
        num_classes=num_classes,
        head=head,
    )
    assert model(torch.randn(2, 6, 3)).shape == shape


def test_last_concat_is_seed_001s_pattern() -> None:
    model = create("residual_lstm", input_size=10, hidden_size=20, num_layers=1, head="last_concat")
    x = torch.randn(1, 100, 10)
    out = model.forward_sequence(x)  # (1, 100, 20)
    skip = model.last_proj(out[:, -1, :])  # last hidden state, projected
    expected = torch.cat((out, skip.unsqueeze(1)), dim=1)
    torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (1, 101, 20)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_plain_twin_equals_skips_disabled(name: str) -> None:
    residual = create(name, input_size=5, hidden_size=8, num_layers=3, num_classes=2)
    plain = create(name, input_size=5, hidden_size=8, num_layers=3, num_classes=2, skip=False)
    assert not any(m.skip_enabled for m in plain.modules() if isinstance(m, sk.SkipModule))
    result = plain.load_state_dict(residual.state_dict(), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ["layers.0.shortcut.bias", "layers.0.shortcut.weight"]
    x = torch.randn(2, 6, 5)
    with torch.no_grad():
        with sk.skips_disabled(residual):
            off = residual(x)
        assert torch.equal(off, plain(x))
        assert not torch.allclose(off, residual(x))


def test_gradients_reach_the_first_layer_and_dropout_only_trains() -> None:
    model = create("residual_gru", input_size=4, hidden_size=8, num_layers=4, dropout=0.5)
    x = torch.randn(2, 5, 4)
    model(x).sum().backward()
    grad = model.layers[0].body.weight_ih_l0.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_errors() -> None:
    model = create("residual_lstm", input_size=4, hidden_size=8)
    with pytest.raises(ValueError, match=r"batch-first sequences \(N, T, input_size\)"):
        model(torch.randn(5, 4))
    with pytest.raises(ValueError, match="head='first'"):
        create("residual_lstm", input_size=4, hidden_size=8, head="first")
    with pytest.raises(ValueError, match="num_layers=0"):
        create("residual_gru", input_size=4, hidden_size=8, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        create("residual_gru", input_size=4, hidden_size=8, dropout=1.0)
