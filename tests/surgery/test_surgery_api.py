"""The wrapper keeps the model's API; wrong names get errors that say what works."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

import skipkit as sk


class WithMethods(nn.Module):
    """``(N, 4) -> (N, 2)``, with a features method that calls submodules directly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.tag = "mine"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


X = torch.randn(3, 4)


def _opened(model: nn.Module) -> sk.surgery.Grafted:
    net = sk.add_skip(model, "a", "b", example=X)
    with torch.no_grad():
        net.skips[0].adapter.gain.fill_(1.0)
    return net


def test_attributes_and_methods_pass_through_and_methods_run_the_skips() -> None:
    model = WithMethods()
    net = _opened(model)
    assert net.tag == "mine"
    expected = model.b(torch.relu(model.a(X))) + model.a(X)  # the skip: b's output + a's
    torch.testing.assert_close(net.features(X), expected)
    torch.testing.assert_close(net(X), model.head(expected))
    with pytest.raises(RuntimeError, match=r"a -> b: dst 'b' ran .*outside a forward pass"):
        net.model.features(X)  # bypasses the wrapper: refuses instead of a stale join
    with pytest.raises(
        AttributeError, match=r"nor the model it wraps \(WithMethods\) has .*'nope'"
    ):
        _ = net.nope
    # copies keep both the skips and the pass-through
    for again in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        torch.testing.assert_close(again.features(X), expected)
        torch.testing.assert_close(again(X), net(X))


def test_connected_passes_through_to_b() -> None:
    a, b = WithMethods(), WithMethods()
    b.tag = "b"
    net = sk.connect(a, b, {"a": "b"}, example=X)
    assert net.tag == "b"
    torch.testing.assert_close(net(X), b(X))


def test_an_fx_operation_name_says_it_works_in_taps_only() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    _, feats = sk.taps(model, ["layer1.0.add"], x)  # fine in taps
    assert feats["layer1.0.add"].shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match=r"src 'layer1.0.add' is an operation .* taps\(\) only"):
        sk.add_skip(model, "layer1.0.add", "layer3", example=x)


def test_unknown_path_in_a_small_model_lists_every_path() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"dst 'out' is not .*\(its submodules: '0', '1', '2'\)"):
        sk.add_skip(model, "0", "out", example=torch.ones(1, 2))
