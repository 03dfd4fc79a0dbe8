"""Registry-wide checks (like timm's): every model builds, counts its parameters right, runs
forward and backward on a tiny input without NaN, and its ``skip=False`` twin has no skip and
equals the model under ``skips_disabled`` with the same weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.models import create, is_registered, list_models


@dataclass(frozen=True)
class Spec:
    """How to exercise one registered model on a tiny input."""

    shape: tuple[int, ...]  # input shape, batch included
    kwargs: dict[str, Any] = field(default_factory=dict)
    params: int | None = None  # exact parameter count (papers / torchvision / timm)
    run: bool = True  # False: too big for a forward on a shared CPU; only counted
    twin_equal: bool = True  # skip=False equals skips_disabled with the same weights


CIFAR = (2, 3, 8, 8)  # 8 -> 4 -> 2 maps: every stage runs, BN sees > 1 value per channel
IMAGENET = (2, 3, 32, 32)  # 32 -> 1x1 at layer4; batch 2 keeps train-mode BN defined
MLP = {"in_features": 6, "out_features": 3, "depth": 3, "width": 8}
TRANSFORMER = {"vocab_size": 10, "context": 8, "depth": 2, "width": 16, "heads": 2}
RNN = {"input_size": 3, "hidden_size": 6, "num_layers": 2, "num_classes": 2}
D_STEM = 28_640 - 9_408  # deep stem (3x3 convs 32, 32, 64 + 2 BN) minus the 7x7 conv

SPECS: dict[str, Spec] = {
    # He et al. 2015 Table 6 (0.27M ... 19.4M); exact counts of option A.
    "resnet20": Spec(CIFAR, params=269_722),
    "resnet32": Spec(CIFAR, params=464_154),
    "resnet44": Spec(CIFAR, params=658_586),
    "resnet56": Spec(CIFAR, params=853_018),
    "resnet110": Spec(CIFAR, params=1_727_962),
    "resnet1202": Spec(CIFAR, params=19_421_274, run=False),
    # torchvision's counts; timm's for the D variants (deep stem, avg-down shortcuts).
    "resnet18": Spec(IMAGENET, params=11_689_512),
    "resnet34": Spec(IMAGENET, params=21_797_672),
    "resnet50": Spec(IMAGENET, params=25_557_032),
    "resnet101": Spec(IMAGENET, params=44_549_160, run=False),
    "resnet152": Spec(IMAGENET, params=60_192_808, run=False),
    "resnet18d": Spec(IMAGENET, params=11_689_512 + D_STEM),
    "resnet34d": Spec(IMAGENET, params=21_797_672 + D_STEM, run=False),
    "resnet50d": Spec(IMAGENET, params=25_576_264),
    "resnet101d": Spec(IMAGENET, params=44_549_160 + D_STEM, run=False),
    "resnet152d": Spec(IMAGENET, params=60_192_808 + D_STEM, run=False),
    # torchvision's DenseNet counts; DenseNet-BC (100, 12) is "0.8M" in Huang et al.
    "densenet121": Spec(IMAGENET, params=7_978_856),
    "densenet161": Spec(IMAGENET, params=28_681_000, run=False),
    "densenet169": Spec(IMAGENET, params=14_149_480, run=False),
    "densenet201": Spec(IMAGENET, params=20_013_928, run=False),
    "densenet_bc": Spec(CIFAR),
    "unet": Spec(
        (1, 1, 16, 16), {"in_channels": 1, "out_channels": 2, "depth": 2, "base_channels": 4}
    ),
    "plain_mlp": Spec((4, 6), MLP),
    "residual_mlp": Spec((4, 6), MLP),
    # skip=False drops the gates with the carry (the paper's plain net), as skips_disabled does
    "highway_mlp": Spec((4, 6), MLP),
    "residual_lstm": Spec((2, 5, 3), RNN),
    "residual_gru": Spec((2, 5, 3), RNN),
    # token-id inputs (not randn): forward, backward and the twin are in test_transformer.py.
    # 7050 = embeddings 160 + 128, 2 blocks x 3280 (2 LN 64, qkv 816, proj 272, fc 1088,
    # proj 1040), final LN 32, head 170; the classifier's head is 51.
    "transformer_lm": Spec((2, 8), TRANSFORMER, params=7_050, run=False),
    "transformer_classifier": Spec(
        (2, 8), {**TRANSFORMER, "num_classes": 3}, params=6_931, run=False
    ),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _spec(name: str) -> Spec:
    if not is_registered(name):
        pytest.skip(f"{name} is not registered (yet)")
    return SPECS[name]


def _accepts_skip(name: str) -> bool:
    return name != "plain_mlp"


def test_every_registered_model_has_a_spec() -> None:
    missing = sorted(set(list_models()) - set(SPECS))
    assert not missing, f"add a Spec to tests/models/test_registry.py for: {missing}"


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.params is not None])
def test_parameter_count(name: str) -> None:
    spec = _spec(name)
    assert n_params(create(name, **spec.kwargs)) == spec.params


def test_densenet_bc_has_the_papers_size() -> None:
    spec = _spec("densenet_bc")
    assert f"{n_params(create('densenet_bc', **spec.kwargs)) / 1e6:.1f}M" == "0.8M"


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.run])
def test_forward_backward_finite(name: str) -> None:
    spec = _spec(name)
    model = create(name, **spec.kwargs).train()
    # plain_mlp's blocks are residual blocks with the skip off for good
    enabled = [m.skip_enabled for m in model.modules() if isinstance(m, sk.SkipModule)]
    assert enabled and all(enabled) == _accepts_skip(name)
    x = torch.randn(spec.shape)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape[0] == spec.shape[0]
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.run and _accepts_skip(n)])
def test_plain_twin_has_no_skip_and_equals_skips_disabled(name: str) -> None:
    spec = _spec(name)
    residual = create(name, **spec.kwargs).eval()
    plain = create(name, skip=False, **spec.kwargs).eval()
    # No skip path: either no SkipModule at all, or only ones switched off for good.
    assert not any(m.skip_enabled for m in plain.modules() if isinstance(m, sk.SkipModule))
    x = torch.randn(spec.shape)
    with torch.no_grad():
        ref = residual(x)
        assert plain(x).shape == ref.shape
        if not spec.twin_equal:
            return
        plain_keys, residual_keys = set(plain.state_dict()), set(residual.state_dict())
        assert plain_keys <= residual_keys, f"{name}: the twin has keys the model lacks"
        plain.load_state_dict(residual.state_dict(), strict=False)
        with sk.skips_disabled(residual):
            off = residual(x)
        torch.testing.assert_close(off, plain(x), rtol=0, atol=0)
        assert not torch.equal(off, ref), f"{name}: turning the skips off changed nothing"


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.run and _accepts_skip(n)])
def test_every_skip_exposes_the_protocol_and_a_gradient_balance(name: str) -> None:
    spec = _spec(name)
    torch.manual_seed(0)
    model = create(name, **spec.kwargs)
    skips = [m for m in model.modules() if isinstance(m, sk.SkipModule)]
    assert skips
    for m in skips:
        assert isinstance(m.shortcut, nn.Module) and isinstance(m.merge, sk.Merge)
        assert m.post is None or isinstance(m.post, nn.Module)
        assert isinstance(m.tap, str) and m.skip_enabled
        assert isinstance(m.describe(), sk.SkipInfo)
    flow = sk.diagnostics.gradient_flow(
        model, torch.randn(spec.shape), lambda out: out.float().square().mean()
    )
    assert len(flow.skips) == len(skips)
    for s in flow.skips:
        assert s.grad_ratio is not None and s.grad_ratio > 0, (name, s.path)
        assert s.forward_ratio is not None, (name, s.path)


def test_an_unknown_option_is_named_with_the_builders_options() -> None:
    with pytest.raises(TypeError) as err:
        create("resnet18", num_clases=3)
    assert str(err.value) == (
        "create('resnet18'): unknown option 'num_clases' (did you mean 'num_classes', "
        "'norm_layer', 'in_channels'?). resnet18 takes: num_classes, in_channels, shortcut, "
        "stem, skip, zero_init_last, norm_layer, drop_path, weights, progress"
    )
    with pytest.raises(TypeError, match=r"unknown option 'bogus'\. resnet20 takes: num_classes"):
        create("resnet20", bogus=1)
    with pytest.raises(TypeError, match=r"'residul' \(did you mean 'residual'\?\)"):
        create("transformer_lm", vocab_size=8, context=4, residul="add")


@pytest.mark.parametrize("name", list_models())
def test_every_builder_lists_its_options(name: str) -> None:
    # each registered builder's options are known (named, or an Unpack[TypedDict]), so
    # create() can name a misspelt one before anything is built
    options = sk.models._registry.builder_options(sk.models._registry._REGISTRY[name])
    assert options is not None
    assert "skip" in options or name == "plain_mlp"
