"""taps: intermediate outputs by submodule path (hooks) or operation name (torch.fx)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skipkit.surgery import AddedSkip, add_skip, taps


def added(net: nn.Module) -> list[AddedSkip]:
    """The added skips of ``net``, typed."""
    return [m for m in net.modules() if isinstance(m, AddedSkip)]


def test_submodule_outputs_match_a_manual_forward(cnn: nn.Sequential) -> None:
    x = torch.randn(2, 3, 16, 16)
    cnn.eval()
    out, feats = taps(cnn, ["1", "4.0", "4"], x)
    torch.testing.assert_close(out, cnn(x))
    torch.testing.assert_close(feats["1"], cnn[:2](x))
    stage = cnn[4]
    assert isinstance(stage, nn.Sequential)
    torch.testing.assert_close(feats["4.0"], stage[0](cnn[:4](x)))
    assert feats["4"].shape == (2, 32, 4, 4)
    assert not any(m._forward_hooks for m in cnn.modules())  # hooks are removed


def test_single_name_and_gradients_flow(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    _, feats = taps(mlp, "3", x)
    feats["3"].sum().backward()
    assert mlp[2].weight.grad is not None and mlp[4].weight.grad is None


def test_untraceable_model_with_hooks(branchy: nn.Module) -> None:
    """Data-dependent control flow defeats torch.fx; hooks still work."""
    x = torch.randn(2, 3, 16, 16)
    out, feats = taps(branchy, ["stem", "right", "head"], x)
    assert feats["right"].shape == (2, 16, 8, 8)
    torch.testing.assert_close(feats["head"], out)
    with pytest.raises(
        ValueError,
        match=r"'add' is not a submodule of Branchy, and torch.fx "
        r"cannot trace the model",
    ):
        taps(branchy, ["stem", "add"], x)


def test_inplace_layer_does_not_change_a_tapped_output() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    x = torch.randn(16, 4)
    _, feats = taps(model, ["0", "1"], x)
    assert (feats["0"] < 0).any() and (feats["1"] >= 0).all()


def test_operation_names_on_traceable_models() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv(x) + x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1, self.block2 = Block(), Block()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flatten(self.block2(self.block1(x)), 1)

    net = Net()
    x = torch.randn(2, 4, 5, 5)
    out, feats = taps(net, ["block1.add", "block1", "block2.conv", "flatten"], x)
    torch.testing.assert_close(feats["block1.add"], net.block1.conv(x) + x)
    torch.testing.assert_close(feats["block1"], F.relu(feats["block1.add"]))
    torch.testing.assert_close(feats["flatten"], out)
    assert feats["block2.conv"].shape == (2, 4, 5, 5)
    with pytest.raises(
        ValueError,
        match=r"tap 'block1.ad' is not a submodule of Net\. Did you "
        r"mean 'block1.add'",
    ):
        taps(net, ["block1.ad"], x)


def test_errors(shared: nn.Module, conditional: nn.Module, mlp: nn.Sequential) -> None:
    with pytest.raises(ValueError, match=r"taps: 'block' ran 2 times in one forward pass"):
        taps(shared, ["block"], torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"taps: 'extra' did not run for this input"):
        taps(conditional, ["extra"], -torch.ones(1, 4))
    with pytest.raises(ValueError, match="taps needs at least one name"):
        taps(mlp, [], torch.randn(1, 8))
    net = add_skip(mlp, "1", "3", example=torch.randn(1, 8))
    with pytest.raises(
        ValueError,
        match=r"tap '33' is not a submodule of Sequential\. Did you "
        r"mean '3'.*would bypass the forward hooks",
    ):
        taps(net, ["33"], torch.randn(1, 8))


def test_names_of_a_grafted_model_are_the_original_ones(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    net = add_skip(mlp, "1", "3", example=x, zero_init=False)
    out, feats = taps(net, ["1", "3"], x)
    torch.testing.assert_close(out, net(x))
    torch.testing.assert_close(feats["3"], mlp[2:4](feats["1"]) + added(net)[0].adapter(feats["1"]))
