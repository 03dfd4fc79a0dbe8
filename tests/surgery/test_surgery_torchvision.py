"""Surgery on torchvision models: vgg11, mobilenet_v2, resnet18 (random weights, 32×32)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.surgery import Grafted, add_skip, list_skips, taps

torchvision = pytest.importorskip("torchvision")


def vgg11() -> nn.Module:
    # The real classifier holds 120M parameters (4 s just to initialise): build the model on
    # the meta device, then give it real VGG-11 features (torchvision's init) and a narrow
    # classifier with the same layout.
    with torch.device("meta"):
        m = torchvision.models.vgg11(weights=None)
    m.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    for conv in m.features.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
    m.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(32, 32),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(32, 10),
    )
    return m


def mobilenet_v2() -> nn.Module:
    return torchvision.models.mobilenet_v2(weights=None, num_classes=10)


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=10)


# (factory, [(src, dst, merge)]): short and long skips, projections, concat, maps into vectors.
CASES: dict[str, tuple[Callable[[], nn.Module], list[tuple[str, str, str]]]] = {
    "vgg11": (
        vgg11,
        [
            ("features.0", "features.8", "add"),  # conv → inplace ReLU: src is copied
            ("features.4", "features.17", "concat"),
            ("features.10", "classifier.0", "tanh_gate"),
        ],
    ),
    "mobilenet_v2": (
        mobilenet_v2,
        [
            ("features.2", "features.6", "add"),
            ("features.1.conv.0", "features.3", "film"),
            ("features.4", "classifier.1", "concat"),
        ],
    ),
    "resnet18": (
        resnet18,
        [
            ("layer1", "layer3", "add"),
            ("conv1", "layer4.1", "concat"),
            ("layer2.0.bn1", "layer2.1.conv2", "rezero_skip"),
            ("layer2", "fc", "tanh_gate"),
        ],
    ),
}


def graft(
    model: nn.Module, skips: list[tuple[str, str, str]], x: torch.Tensor, zero_init: bool = True
) -> Grafted:
    (src, dst, merge), *rest = skips
    net = add_skip(model, src, dst, merge=merge, example=x, zero_init=zero_init)
    for src, dst, merge in rest:
        net = add_skip(net, src, dst, merge=merge, example=x, zero_init=zero_init)
    return net


@pytest.mark.parametrize("name", list(CASES))
def test_torchvision_function_preserved_gradients_and_learning(name: str) -> None:
    factory, skips = CASES[name]
    model = factory().eval()
    x = torch.randn(2, 3, 32, 32)
    net = graft(model, skips, x)
    assert [(i.tap, i.dst, i.merge) for i in list_skips(net)] == skips
    net.eval()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(net(x), expected, atol=1e-6, rtol=0)

    net.train()
    adapters = list(net.skips.parameters())
    before = [p.detach().clone() for p in adapters]
    opt = torch.optim.SGD(adapters, lr=0.05)  # the model stays fixed: adapters learn
    for step in range(3):
        opt.zero_grad()
        net(x).logsumexp(1).mean().backward()
        if step == 0:
            for skip in net.skips:
                grads = [p.grad for p in skip.parameters()]
                assert any(g is not None and g.abs().sum() > 0 for g in grads), skip.label
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, adapters, strict=True) if b.ndim)
    with torch.no_grad():
        net.eval()
        assert not torch.allclose(net(x), expected, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_torchvision_skips_disabled_is_the_wrapped_model(name: str) -> None:
    factory, skips = CASES[name]
    x = torch.randn(1, 3, 32, 32)
    net = graft(factory().eval(), skips, x, zero_init=False)
    net.eval()
    with torch.no_grad():
        changed = net(x)
        with sk.skips_disabled(net):
            plain = net(x)
        # Without hooks, the wrapped copy computes the original function.
        for i in reversed(range(len(net.skips))):
            sk.surgery.remove_skip(net, i)
        torch.testing.assert_close(net(x), plain, atol=0, rtol=0)
        assert not torch.allclose(changed, plain)


def test_torchvision_taps_and_operation_names() -> None:
    model = resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    out, feats = taps(model, ["layer1", "layer2.0.add", "layer4", "flatten"], x)
    assert feats["layer1"].shape == (1, 64, 8, 8)
    assert feats["layer2.0.add"].shape == (1, 128, 4, 4)
    torch.testing.assert_close(feats["flatten"], feats["layer4"].mean((2, 3)))
    torch.testing.assert_close(out, model(x))
