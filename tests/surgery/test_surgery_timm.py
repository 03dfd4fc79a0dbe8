"""Surgery on real timm models, built from their configs with random weights (no downloads).

Each model gets one added skip and must: compute exactly the original at step 0, train (the
adapter gets a gradient and moves the output), round-trip its state_dict, switch off with
``skips_disabled``, and keep the model's API (``forward_features``, ``num_classes``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.surgery import Grafted, ZeroGain

timm = pytest.importorskip("timm")

X = torch.randn(2, 3, 32, 32)


def _vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5)


MODELS: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    "resnet18": (lambda: timm.create_model("resnet18", num_classes=5), "layer1", "layer3"),
    "convnext_atto": (
        lambda: timm.create_model("convnext_atto", num_classes=5),
        "stages.0",
        "stages.2",
    ),
    "efficientnet_b0": (
        lambda: timm.create_model("efficientnet_b0", num_classes=5),
        "blocks.1",
        "blocks.3",
    ),
    "vit": (_vit, "blocks.0", "blocks.1"),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, Grafted, Callable[[], nn.Module]]:
    make, src, dst = MODELS[request.param]
    torch.manual_seed(0)
    model = make().eval()
    return model, sk.add_skip(model, src, dst, example=X), make


def _open(net: Grafted) -> None:
    """Give the zero-initialised adapter weights, as training would."""
    with torch.no_grad():
        for p in net.skips.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def test_identity_at_step_0_and_the_api_passes_through(case: tuple) -> None:
    model, net, _ = case
    torch.testing.assert_close(net(X), model(X), rtol=0, atol=0)
    assert net.num_classes == 5
    torch.testing.assert_close(net.forward_features(X), model.forward_features(X), rtol=0, atol=0)
    assert list(net.model.state_dict()) == list(model.state_dict())


def test_trains_round_trips_and_switches_off(case: tuple) -> None:
    model, net0, make = case
    net = copy.deepcopy(net0).train()
    loss = net(X).square().mean()
    loss.backward()
    grads = [p.grad for p in net.skips.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the zero adapter learns
    net.eval()
    _open(net)
    y = net(X)
    assert not torch.allclose(y, model(X))
    # forward_features through the wrapper runs the skip too
    torch.testing.assert_close(net.forward_head(net.forward_features(X)), y)
    # state_dict round trip into a fresh wrapper of a fresh model
    src, dst = net.skips[0].src, net.skips[0].dst
    fresh = sk.add_skip(make().eval(), src, dst, example=X)
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(X), y, rtol=0, atol=0)
    # skips_disabled gives the plain model with the same weights
    plain = make().eval()
    plain.load_state_dict(net.model.state_dict())
    with sk.skips_disabled(net):
        torch.testing.assert_close(net(X), plain(X), rtol=0, atol=0)


def test_convnext_layouts_come_from_the_tensors() -> None:
    # LayerNorm2d subclasses nn.LayerNorm and the blocks run Linear on an NHWC view, but the
    # stages give NCHW maps: the shortcut is a strided 1x1 conv, the same-shape gain per channel.
    model = timm.create_model("convnext_atto", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    net = sk.add_skip(model, "stages.0", "stages.2", example=x)  # (2, 40, 16, 16) -> (2, 160, 4, 4)
    conv = net.skips[0].adapter[0]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (40, 160)
    assert conv.stride == (4, 4)
    same = sk.add_skip(model, "stages.1.blocks.0", "stages.1.blocks.1", example=x)
    gain = same.skips[0].adapter
    assert isinstance(gain, ZeroGain) and gain.gain.shape == (80,)
    with torch.no_grad():
        gain.gain.copy_(torch.arange(80.0))
    _, feats = sk.taps(model, ["stages.1.blocks.0", "stages.1.blocks.1"], x)
    _, joined = sk.taps(same, ["stages.1.blocks.1"], x)
    scale = torch.arange(80.0).view(1, 80, 1, 1)  # one gain per channel (dim 1)
    expected = feats["stages.1.blocks.1"] + scale * feats["stages.1.blocks.0"]
    torch.testing.assert_close(joined["stages.1.blocks.1"], expected)


def test_submodules_called_outside_the_model_raise_instead_of_joining_a_stale_tensor() -> None:
    model = timm.create_model("resnet18", num_classes=5).eval()
    net = sk.add_skip(model, "layer1", "layer3", example=X)
    net(X)
    h1 = net.model.layer1(torch.randn(2, 64, 8, 8))
    with pytest.raises(RuntimeError, match=r"layer1 -> layer3: dst 'layer3' ran .*outside a"):
        net.model.layer3(torch.randn(2, 128, 4, 4))
    with pytest.raises(RuntimeError, match=r"through the wrapper \(net\.forward_features\(x\)\)"):
        net.model.forward_features(X)
    assert h1.shape == (2, 64, 8, 8)  # a src alone computes the original function
    torch.testing.assert_close(net(X), model(X), rtol=0, atol=0)  # and nothing leaked


def test_activation_checkpointing_is_refused_up_front() -> None:
    model = timm.create_model("resnet18", num_classes=5)
    net = sk.add_skip(model, "layer1", "layer3", example=X)
    with pytest.raises(ValueError, match=r"set_grad_checkpointing: activation checkpointing"):
        net.set_grad_checkpointing()
    net.set_grad_checkpointing(False)  # turning it off is fine
    model.set_grad_checkpointing()
    with pytest.raises(ValueError, match=r"checkpointing is on in ResNet .*set_grad_checkpointing"):
        sk.add_skip(model, "layer1", "layer3", example=X)
    # Turned on behind the wrapper's back: the forward pass says why it fails.
    net.model.set_grad_checkpointing()
    net.train()
    with pytest.raises(RuntimeError, match=r"layer1 -> layer3: .*activation checkpointing is on"):
        net(X)


@pytest.mark.slow
def test_vit_compiles_and_matches_eager() -> None:
    model = _vit().eval()
    net = sk.add_skip(model, "blocks.0", "blocks.1", example=X)
    _open(net)
    compiled = torch.compile(net, backend="aot_eager")
    torch.testing.assert_close(compiled(X), net(X))
    compiled(X).sum().backward()
    assert all(p.grad is not None for p in net.skips.parameters())
