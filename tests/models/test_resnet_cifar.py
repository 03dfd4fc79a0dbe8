"""CIFAR ResNets (He et al. 2015, section 4.2): counts, blocks, plain twins, dims=1, compile."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skipkit as sk
from skipkit.models import create
from skipkit.models.resnet_cifar import CifarBlock, CifarResNet, PlainCifarBlock, cifar_resnet

# He et al. 2015, Table 6: parameters, at the paper's rounding.
PAPER_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_rounding(n: int, like: str) -> str:
    decimals = len(like.split(".")[1]) - 1  # "0.27M" -> 2, "1.7M" -> 1
    return f"{n / 1e6:.{decimals}f}M"


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(depth: int) -> None:
    model = create(f"resnet{depth}")
    assert paper_rounding(n_params(model), PAPER_PARAMS[depth]) == PAPER_PARAMS[depth]
    assert model.depth == depth
    # 2 convs per block, 3 stages, plus the stem conv and the fc: 6n + 2 weighted layers.
    weighted = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weighted) == depth


def test_exact_counts_and_option_b_projection_cost() -> None:
    a, b = create("resnet20"), create("resnet20", shortcut="B")
    assert n_params(a) == 269_722
    # Two 1x1 projections (16->32, 32->64) with BN: 16*32 + 2*32 + 32*64 + 2*64.
    assert n_params(b) - n_params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert n_params(create("resnet20", skip=False)) == n_params(a)


def test_block_matches_a_hand_written_option_a_block() -> None:
    block = CifarBlock(16, 32, stride=2, option="A").eval()
    for bn in (block.bn1, block.bn2):  # non-trivial BN statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 16, 8, 8)

    def bn(m: nn.BatchNorm2d, h: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, stride=2, padding=1)))
    h = bn(block.bn2, F.conv2d(h, block.conv2.weight, padding=1))
    skip = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1)  # subsample, pad
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(h + skip), atol=1e-6)
        with sk.skips_disabled(block):
            assert torch.allclose(block(x), F.relu(h), atol=1e-6)


def test_shortcut_modules_per_option() -> None:
    a = create("resnet20")
    b = create("resnet20", shortcut="project")
    assert isinstance(a.layer2[0].shortcut, sk.ZeroPad)
    assert isinstance(a.layer1[0].shortcut, nn.Identity)
    assert isinstance(a.layer2[1].shortcut, nn.Identity)
    proj = b.layer3[0].shortcut
    assert isinstance(proj, nn.Sequential)
    assert isinstance(proj[0], nn.Conv2d) and proj[0].kernel_size == (1, 1)
    assert proj[0].stride == (2, 2) and isinstance(proj[1], nn.BatchNorm2d)
    assert b.layer3[0].describe().shortcut == "option B"
    assert a.layer3[0].describe().parameters == 0


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_skips_disabled_equals_the_plain_twin_with_the_same_weights(shortcut: str) -> None:
    residual = create("resnet20", shortcut=shortcut)
    plain = create("resnet20", shortcut=shortcut, skip=False)
    assert not any(isinstance(m, sk.SkipModule) for m in plain.modules())
    assert all(isinstance(b, PlainCifarBlock) for b in plain.layer2)
    # Train a little so the BN statistics are not the identity.
    residual.train()
    with torch.no_grad():
        for _ in range(2):
            residual(torch.randn(8, 3, 16, 16))
    result = plain.load_state_dict(residual.state_dict(), strict=shortcut == "A")
    if shortcut == "B":
        assert result.missing_keys == []
        assert all(".shortcut." in k for k in result.unexpected_keys)
        assert len(result.unexpected_keys) == 2 * 6  # two conv+BN projections
    residual.eval()
    plain.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with sk.skips_disabled(residual):
            off = residual(x)
        assert torch.equal(off, plain(x))
        assert not torch.allclose(residual(x), off)  # the skips did change something
    assert all(m.skip_enabled for m in residual.modules() if isinstance(m, sk.SkipModule))


def test_dims1_for_mnist1d_sequences() -> None:
    plain = create("resnet56", dims=1, in_channels=1, num_classes=10, skip=False)
    assert isinstance(plain.conv1, nn.Conv1d) and isinstance(plain.bn1, nn.BatchNorm1d)
    assert isinstance(plain.avgpool, nn.AdaptiveAvgPool1d)
    assert not any(isinstance(m, nn.Conv2d) for m in plain.modules())
    x = torch.randn(2, 1, 40)
    assert plain(x).shape == (2, 10)
    residual = create("resnet56", dims=1, in_channels=1, num_classes=10)
    assert residual.forward_features(x).shape == (2, 64, 10)  # 40 -> 20 -> 10
    assert n_params(residual) == n_params(plain)
    out = residual(x)
    out.sum().backward()
    assert residual.conv1.weight.grad is not None
    assert torch.isfinite(residual.conv1.weight.grad).all()


def test_he_init_and_zero_init_last() -> None:
    model = create("resnet32")
    w = model.layer3[2].conv2.weight  # fan_out = 64 * 3 * 3
    assert abs(w.std().item() - math.sqrt(2.0 / (64 * 9))) < 0.03 * math.sqrt(2.0 / (64 * 9))
    assert model.bn1.weight.eq(1).all() and model.bn1.bias.eq(0).all()
    zero = create("resnet20", zero_init_last=True).eval()
    assert all(b.bn2.weight.eq(0).all() for b in zero.layer1)
    block = zero.layer1[1]
    x = torch.relu(torch.randn(2, 16, 8, 8))  # block inputs are post-ReLU
    with torch.no_grad():
        assert torch.equal(block(x), x)  # each block starts as the identity


def test_bad_depth_and_options_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"6n\+2.*20, 26, 32"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match="6n"):
        cifar_resnet(2)
    with pytest.raises(ValueError, match=r"shortcut='C'.*'A'.*'B'"):
        create("resnet20", shortcut="C")
    with pytest.raises(ValueError, match=r"dims=4"):
        create("resnet20", dims=4)
    assert cifar_resnet(8).depth == 8  # the smallest valid depth


def test_registered_names() -> None:
    from skipkit.models import list_models

    names = set(list_models("resnet*"))
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"} <= names
    assert isinstance(create("resnet44", num_classes=100), CifarResNet)
    assert create("resnet44", num_classes=100).fc.out_features == 100


@pytest.mark.slow
def test_compile_fullgraph_matches_eager() -> None:
    model = create("resnet20")
    twin = copy.deepcopy(model)
    # fullgraph=True fails on any graph break; the "eager" backend keeps the CPU cost low
    # (inductor's C++ build takes about a minute on a 2-core machine).
    compiled = torch.compile(twin, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 16, 16)
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    ref.square().mean().backward()
    torch.testing.assert_close(twin.conv1.weight.grad, model.conv1.weight.grad)
    model.eval()
    twin.eval()
    with torch.no_grad(), sk.skips_disabled(model), sk.skips_disabled(twin):
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
