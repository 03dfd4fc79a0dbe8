"""ImageNet ResNets: torchvision equality, weights loading, ResNet-D, options, plain twins."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import skipkit as sk
from skipkit.models import create
from skipkit.models.resnet import BasicBlock, Bottleneck, ResNet

# torchvision's published parameter counts.
TV_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_against_torchvision(name: str) -> None:
    tv = getattr(torchvision.models, name)(weights=None).eval()
    ours = create(name).eval()
    assert n_params(ours) == TV_PARAMS[name]
    tv_state = tv.state_dict()
    assert list(ours.state_dict()) == list(tv_state)  # same keys, same order
    ours.load_state_dict(tv_state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - tv(x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_same_keys_and_outputs_as_torchvision(name: str) -> None:
    _check_against_torchvision(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101", "resnet152"])
def test_same_keys_and_outputs_as_torchvision_deep(name: str) -> None:
    _check_against_torchvision(name)


def test_training_step_matches_torchvision() -> None:
    tv = torchvision.models.resnet18(weights=None, num_classes=5)
    ours = create("resnet18", num_classes=5)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for model in (tv, ours):
        F.cross_entropy(model(x), torch.tensor([1, 3])).backward()
    for (name, p), q in zip(ours.named_parameters(), tv.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(ours.bn1.running_mean, tv.bn1.running_mean)


def test_channels_last_gives_the_same_outputs() -> None:
    model = create("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def _train_step(model: nn.Module, channels_last: bool) -> Callable[[], None]:
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        F.cross_entropy(model.train()(x), torch.tensor([1, 3])).backward()

    return step


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_train_step_dispatches_torchvisions_ops(
    name: str, channels_last: bool, assert_same_ops: Callable[..., int]
) -> None:
    # The speed claim (benchmarks/bench_resnet50.py, <= 1.02x) rests on this: forward and
    # backward run the same ATen ops as torchvision's, in the same order and memory formats,
    # so any timing gap is Python overhead or machine noise, never extra work.
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None, num_classes=5)
    ours = create(name, num_classes=5)
    ours.load_state_dict(tv.state_dict())
    assert assert_same_ops(_train_step(ours, channels_last), _train_step(tv, channels_last)) > 100


@pytest.fixture(scope="module")
def tv18() -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        return bool((a.eval()(x) - b.eval()(x)).abs().max() <= 1e-5)


def test_weights_from_safetensors_and_torch_files(tv18: nn.Module, tmp_path: Path) -> None:
    state = tv18.state_dict()
    st = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    pt = tmp_path / "resnet18.pth"
    torch.save(state, pt)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": state}, wrapped)
    for path in (st, pt, str(wrapped)):
        model = create("resnet18", weights=path)
        assert _same_outputs(model, tv18), path


def test_weights_from_a_url_through_the_torch_hub_cache(
    tv18: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = Path(torch.hub.get_dir())
    if not hub.is_relative_to(tmp_path):
        pytest.skip("torch.hub.set_dir() was called in this process; cannot isolate the cache")
    cache = hub / "checkpoints"
    cache.mkdir(parents=True)
    # Pre-filled cache: torch.hub finds the file and downloads nothing (no network in tests).
    torch.save(tv18.state_dict(), cache / "resnet18-test.pth")
    safetensors.torch.save_file(tv18.state_dict(), str(cache / "resnet18-test.safetensors"))
    for url in (
        "https://example.invalid/weights/resnet18-test.pth",
        "https://example.invalid/weights/resnet18-test.safetensors",
    ):
        assert _same_outputs(create("resnet18", weights=url), tv18), url


def test_fine_tuning_keeps_a_fresh_head(tv18: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(tv18.state_dict(), str(path))
    model = create("resnet18", weights=path, num_classes=7)
    assert model.fc.out_features == 7
    torch.testing.assert_close(model.layer4[1].conv2.weight, tv18.layer4[1].conv2.weight)
    assert not torch.equal(model.fc.weight[:7], tv18.fc.weight[:7])


class _NotAStateDict:
    pass


def test_bad_weights_files_raise_clear_errors(tv18: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create("resnet18", weights=tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"neither a torch checkpoint nor a \.safetensors"):
        create("resnet18", weights=text)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        create("resnet18", weights=broken)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"fc.weight": _NotAStateDict()}, unsafe)
    with pytest.raises(ValueError, match=r"weights_only=True.*_NotAStateDict") as info:
        create("resnet18", weights=unsafe)
    assert "weights_only=False" not in str(info.value)  # never advise the unsafe way
    legacy = tmp_path / "legacy.pt"  # a bare pickle, not torch.save's zip format
    with legacy.open("wb") as f:
        pickle.dump({"fc.weight": _NotAStateDict()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        create("resnet18", weights=legacy)
    st_as_pt = tmp_path / "really-safetensors.pt"  # the content decides, not the suffix
    safetensors.torch.save_file(tv18.state_dict(), str(st_as_pt))
    assert _same_outputs(create("resnet18", weights=st_as_pt), tv18)
    other = tmp_path / "resnet34.pth"
    torch.save(create("resnet34").state_dict(), other)
    with pytest.raises(ValueError, match=r"missing 0 key\(s\).*unexpected \d+ key\(s\).*layer1\.2"):
        create("resnet18", weights=other)
    grey = tmp_path / "rgb.pth"
    torch.save(tv18.state_dict(), grey)
    with pytest.raises(ValueError, match=r"conv1\.weight: checkpoint \(64, 3, 7, 7\).*in_channels"):
        create("resnet18", weights=grey, in_channels=1)
    with pytest.raises(TypeError, match="path, an http"):
        create("resnet18", weights=3)


def test_resnet_d_structure_and_shortcut() -> None:
    model = create("resnet50d").eval()
    assert n_params(model) == 25_576_264  # timm's resnet50d: deep stem + avg-down
    assert [k for k in model.state_dict() if k.startswith("conv1.") and "weight" in k] == [
        "conv1.0.weight",
        "conv1.1.weight",
        "conv1.3.weight",
        "conv1.4.weight",
        "conv1.6.weight",
    ]
    assert isinstance(model.layer1[0].downsample[0], nn.Identity)  # stride 1: no pool
    ds = model.layer2[0].downsample
    assert isinstance(ds[0], nn.AvgPool2d)
    ds[2].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 256, 9, 9)  # odd size: ceil_mode keeps the last row and column
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    with torch.no_grad():
        torch.testing.assert_close(ds(x), ds[2](ds[1](pooled)))
        assert model.layer2[0](x).shape == (2, 512, 5, 5)
    assert create("resnet18", shortcut="avgdown").layer2[0].downsample[1].stride == (1, 1)


def test_option_a_shortcut_has_no_parameters() -> None:
    a = create("resnet50", shortcut="A")
    b = create("resnet50")
    proj = sum(
        n_params(m.downsample) for m in b.modules() if isinstance(m, Bottleneck) and m.downsample
    )
    assert n_params(a) == n_params(b) - proj
    assert isinstance(a.layer2[0].downsample, sk.ZeroPad)
    assert a(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_options_num_classes_in_channels_norm_layer() -> None:
    model = create("resnet18", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    gn = create("resnet18", norm_layer=lambda c: nn.GroupNorm(8, c))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert isinstance(gn.layer3[0].downsample[1], nn.GroupNorm)
    assert "layer1.0.bn1.weight" in gn.state_dict()
    assert gn(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_zero_init_last_makes_every_block_the_identity() -> None:
    model = create("resnet50", zero_init_last=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert all(b.bn3.weight.eq(0).all() for b in blocks)
    x = torch.relu(torch.randn(1, 256, 8, 8))
    with torch.no_grad():
        assert torch.equal(model.layer1[1](x), x)
    basic = create("resnet18", zero_init_last=True)
    assert all(m.bn2.weight.eq(0).all() for m in basic.modules() if isinstance(m, BasicBlock))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_plain_twin_equals_skips_disabled(name: str) -> None:
    residual = create(name)
    plain = create(name, skip=False)
    blocks = [m for m in plain.modules() if isinstance(m, sk.SkipModule)]
    assert blocks and not any(m.skip_enabled or m.downsample is not None for m in blocks)
    result = plain.load_state_dict(residual.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(".downsample." in k for k in result.unexpected_keys)
    x = torch.randn(1, 3, 64, 64)
    residual.eval()
    plain.eval()
    with torch.no_grad():
        with sk.skips_disabled(residual):
            off = residual(x)
        assert torch.equal(off, plain(x))
        assert not torch.allclose(off, residual(x))
    if name == "resnet50":
        assert isinstance(plain.layer2[0], Bottleneck)
        assert isinstance(plain.layer2[0].shortcut, nn.Identity)


def test_drop_path_rates_increase_linearly() -> None:
    model = create("resnet18", drop_path=0.2)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert blocks[0].drop_path is None  # rate 0 for the first block
    rates = [b.drop_path.p for b in blocks[1:]]
    torch.testing.assert_close(torch.tensor(rates), torch.arange(1, 8) * 0.2 / 7)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: no dropping
    model.train()
    blocks[-1].drop_path.p = 0.99
    with torch.no_grad():
        out = blocks[-1](torch.relu(torch.randn(8, 512, 2, 2)))
    assert out.isfinite().all()
    with pytest.raises(ValueError, match="plain net has no skip"):
        create("resnet18", skip=False, drop_path=0.1)
    with pytest.raises(ValueError, match="drop_path"):
        create("resnet18", drop_path=1.0)


def test_bad_options_raise() -> None:
    with pytest.raises(
        ValueError, match=r"shortcut 'C' for ResNet.*'project'.*'B'.*'avgdown'.*'pad'"
    ):
        create("resnet18", shortcut="C")
    with pytest.raises(ValueError, match="stem"):
        create("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="4 stages"):
        ResNet("basic", (2, 2, 2))
    with pytest.raises(ValueError, match="'basic' or 'bottleneck'"):
        ResNet("wide", (2, 2, 2, 2))  # type: ignore[arg-type]


def test_describe_lists_the_shortcut() -> None:
    model = create("resnet18")
    info = model.layer2[0].describe()
    assert (info.shortcut, info.merge, info.formula) == ("Conv2d+BatchNorm2d", "add", "s + b")
    assert info.parameters == 64 * 128 + 2 * 128
    assert model.layer2[1].describe().shortcut == "Identity"
    assert create("resnet18d").layer2[0].describe().shortcut == "AvgPool2d+Conv2d+BatchNorm2d"
