"""Plain, residual and highway MLPs: structure, hand-written equality, twins, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skipkit as sk
from skipkit.models import create
from skipkit.models._blocks import Plain
from skipkit.models.mlp import MLP, highway_gate_bias

SIZES = {"in_features": 10, "out_features": 3, "width": 16}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["plain_mlp", "residual_mlp", "highway_mlp"])
def test_shapes_and_blocks(name: str) -> None:
    model = create(name, depth=4, **SIZES)
    assert isinstance(model, MLP)
    assert model(torch.randn(5, 10)).shape == (5, 3)
    kinds = {type(b) for b in model.blocks}
    expected = {"plain_mlp": Plain, "residual_mlp": sk.Residual, "highway_mlp": sk.Highway}
    assert kinds == {expected[name]}


def test_parameter_counts() -> None:
    depth, (i, o, w) = 6, (10, 3, 16)
    linear = (i * w + w) + depth * (w * w + w) + (w * o + o)
    assert n_params(create("plain_mlp", depth=depth, **SIZES)) == linear
    assert n_params(create("residual_mlp", depth=depth, **SIZES)) == linear  # identity skips
    gates = depth * (w * w + w)  # one Linear transform gate per highway block
    assert n_params(create("highway_mlp", depth=depth, **SIZES)) == linear + gates
    assert n_params(create("plain_mlp", depth=0, **SIZES)) == (i * w + w) + (w * o + o)


def test_residual_mlp_matches_a_hand_written_net() -> None:
    model = create("residual_mlp", depth=3, **SIZES)
    x = torch.randn(4, 10)
    h = F.relu(F.linear(x, model.stem[0].weight, model.stem[0].bias))
    for block in model.blocks:
        lin = block.body[0]
        h = h + F.relu(F.linear(h, lin.weight, lin.bias))  # seed 000: act(Dense(x)) + x
    expected = F.linear(h, model.head.weight, model.head.bias)
    torch.testing.assert_close(model(x), expected)


def test_highway_mlp_matches_a_hand_written_net_and_gate_bias() -> None:
    model = create("highway_mlp", depth=2, gate_bias=-1.5, **SIZES)
    x = torch.randn(4, 10)
    h = F.relu(model.stem[0](x))
    for block in model.blocks:
        gate = block.merge.transform
        assert torch.equal(gate.bias, torch.full((16,), -1.5))
        t = torch.sigmoid(F.linear(h, gate.weight, gate.bias))
        h = t * F.relu(block.body[0](h)) + (1 - t) * h
    torch.testing.assert_close(model(x), model.head(h))


@pytest.mark.parametrize(("depth", "bias"), [(3, -1.0), (10, -1.0), (20, -2.0), (30, -3.0)])
def test_default_gate_bias_follows_the_paper(depth: int, bias: float) -> None:
    assert highway_gate_bias(depth) == bias  # Srivastava et al.: -1, -2, -3 for 10, 20, 30
    model = create("highway_mlp", depth=depth, **SIZES)
    assert model.blocks[0].merge.transform.bias.eq(bias).all()
    assert highway_gate_bias(100) == -3.0


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_skip_false_is_the_plain_twin_of_residual(norm: str | None) -> None:
    residual = create("residual_mlp", depth=3, norm=norm, **SIZES)
    plain = create("residual_mlp", depth=3, norm=norm, skip=False, **SIZES)
    assert not any(isinstance(m, sk.SkipModule) for m in plain.modules())
    assert list(plain.state_dict()) == list(residual.state_dict())
    plain.load_state_dict(residual.state_dict())
    residual.eval()
    plain.eval()
    x = torch.randn(4, 10)
    with torch.no_grad(), sk.skips_disabled(residual):
        assert torch.equal(residual(x), plain(x))


def test_highway_twin_drops_the_gates_as_skips_disabled_does() -> None:
    highway = create("highway_mlp", depth=3, **SIZES)
    plain = create("highway_mlp", depth=3, skip=False, **SIZES)
    result = plain.load_state_dict(highway.state_dict(), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(
        f"blocks.{i}.merge.transform.{p}" for i in range(3) for p in ("weight", "bias")
    )
    x = torch.randn(4, 10)
    h = highway.stem(x)
    with torch.no_grad(), sk.skips_disabled(highway):
        block = highway.blocks[0]
        assert torch.equal(block(h), block.body(h))  # H alone: no carry, no gate
        assert torch.equal(highway(x), plain(x))


def test_rezero_merge_starts_as_the_shallow_net() -> None:
    model = create("residual_mlp", depth=5, merge="rezero", **SIZES)
    x = torch.randn(4, 10)
    torch.testing.assert_close(model(x), model.head(model.stem(x)))


def test_skips_keep_gradients_alive_where_the_plain_net_loses_them() -> None:
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    norms = {}
    for name in ("plain_mlp", "residual_mlp", "highway_mlp"):
        torch.manual_seed(0)
        model = create(name, depth=50, activation="tanh", **SIZES)
        F.cross_entropy(model(x), y).backward()
        norms[name] = model.stem[0].weight.grad.norm().item()
    assert norms["plain_mlp"] < 1e-6  # vanished through 50 tanh layers
    assert norms["residual_mlp"] > 1e-2 and norms["highway_mlp"] > 1e-3


def test_options_and_errors() -> None:
    model = create("residual_mlp", depth=2, activation=nn.GELU, dropout=0.1, **SIZES)
    assert isinstance(model.blocks[0].body[1], nn.GELU)
    assert isinstance(model.blocks[0].body[2], nn.Dropout)
    custom = create("plain_mlp", depth=1, norm=lambda w: nn.GroupNorm(4, w), **SIZES)
    assert isinstance(custom.blocks[0].body[1], nn.GroupNorm)
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        create("plain_mlp", depth=1, activation="swishy", **SIZES)
    with pytest.raises(TypeError, match="factory"):
        create("plain_mlp", depth=1, activation=nn.ReLU(), **SIZES)
    with pytest.raises(ValueError, match="unknown norm 'group'"):
        create("plain_mlp", depth=1, norm="group", **SIZES)
    with pytest.raises(ValueError, match="depth >= 0"):
        create("plain_mlp", depth=-1, **SIZES)
    with pytest.raises(ValueError, match="in_features=0"):
        create("plain_mlp", in_features=0, out_features=3, depth=1)
