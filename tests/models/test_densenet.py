"""DenseNets: torchvision equality (keys, outputs, weight files), DenseNet-BC's size, the
memory-efficient mode (same outputs, gradients and BatchNorm statistics, less saved memory)
and the plain twin."""

from __future__ import annotations

import copy
import functools
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

import skipkit as sk
from skipkit.dense import DenseBlock
from skipkit.models import create
from skipkit.models.densenet import DenseNet, densenet121, densenet_bc

DEPTHS = ["densenet121", "densenet161", "densenet169", "densenet201"]


def _tv(name: str) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None)


@pytest.mark.parametrize("name", DEPTHS)
def test_same_keys_and_outputs_as_torchvision(name: str) -> None:
    ref = _tv(name).eval()
    model = create(name).eval()
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def _legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's published files spell "norm1" as "norm.1" inside dense layers."""
    out = {}
    for key, value in state.items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        out[key] = value
    return out


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "legacy-pth"])
def test_weights_load_from_a_torchvision_file(tmp_path: Path, fmt: str) -> None:
    ref = _tv("densenet121").eval()
    state = ref.state_dict()
    path = tmp_path / f"w.{fmt.split('-')[-1]}"
    if fmt == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(_legacy(state) if fmt == "legacy-pth" else state, path)
    if fmt == "legacy-pth":
        assert "features.denseblock1.denselayer1.norm.1.weight" in torch.load(path)
    model = densenet121(weights=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_weights_for_another_head_keep_a_fresh_classifier(tmp_path: Path) -> None:
    ref = _tv("densenet121")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = densenet121(num_classes=7, weights=tmp_path / "w.pth")
    assert model.classifier.out_features == 7
    torch.testing.assert_close(
        model.get_parameter("features.conv0.weight"), ref.get_parameter("features.conv0.weight")
    )


def test_weights_of_another_depth_are_refused(tmp_path: Path) -> None:
    torch.save(_tv("densenet121").state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="other shapes in the checkpoint"):
        create("densenet169", weights=tmp_path / "w.pth")


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running" in k or "batches" in k}


def _assert_same_gradient(
    got: torch.Tensor | None, want: torch.Tensor | None, name: str = ""
) -> None:
    """Equal up to float rounding: the memory-efficient backward rebuilds activations from
    saved statistics, which may change their last bit (a wrong gradient is off by far more)."""
    assert got is not None and want is not None, name
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale, msg=name or None)


def _train_step(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)  # the same dropout masks in both models
    x = x.clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad


@pytest.mark.parametrize(
    ("builder", "shape"),
    [
        # 64 x 64, not 32: at 32 the last block's maps are 1 x 1, its batch norms see two
        # values per channel and amplify the rebuilt activations' last-bit changes to 5e-6 of
        # the largest gradient, sometimes past the 1e-5 allowed (3e-7 at 64)
        (functools.partial(densenet121, num_classes=10), (2, 3, 64, 64)),
        (functools.partial(densenet_bc, depth=22, drop_rate=0.2), (2, 3, 16, 16)),
        (functools.partial(densenet_bc, depth=16, skip=False), (2, 3, 8, 8)),
    ],
    ids=["densenet121", "densenet_bc-22-dropout", "plain-twin"],
)
def test_memory_efficient_is_exact_in_training(builder: functools.partial, shape: tuple) -> None:
    plain_mode = builder().train()
    efficient = copy.deepcopy(plain_mode)
    efficient.memory_efficient = True
    assert efficient.memory_efficient and not plain_mode.memory_efficient
    x = torch.randn(shape)
    for step in range(2):  # two steps: the second starts from updated running statistics
        out_a, gx_a = _train_step(plain_mode, x, seed=step)
        out_b, gx_b = _train_step(efficient, x, seed=step)
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
        _assert_same_gradient(gx_b, gx_a)
    for (name, p), q in zip(plain_mode.named_parameters(), efficient.parameters(), strict=True):
        assert q.grad is not None, name
        _assert_same_gradient(q.grad, p.grad, name)
    # A recomputation that ran BatchNorm in training mode again would count each batch twice.
    bn_a, bn_b = _bn_state(plain_mode), _bn_state(efficient)
    assert int(bn_b["features.denseblock1.denselayer1.norm1.num_batches_tracked"]) == 2
    for key in bn_a:
        torch.testing.assert_close(bn_b[key], bn_a[key], rtol=0, atol=0, msg=key)


def _dense_block(dims: int, memory_efficient: bool) -> DenseBlock:
    make = functools.partial(sk.DenseLayer, bn_size=2, dims=dims)
    return DenseBlock(make, 3, 4, memory_efficient, in_channels=5)


@pytest.mark.parametrize("dims", [1, 3])
def test_memory_efficient_block_in_1d_and_3d_with_cumulative_bn(dims: int) -> None:
    a = _dense_block(dims, False).train()
    for m in a.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: the factor depends on the batch count
    b = copy.deepcopy(a)
    b.memory_efficient = True
    x = torch.randn((2, 5) + (5,) * dims, dtype=torch.float64)
    a.double(), b.double()
    for _ in range(2):
        out_a, gx_a = _train_step(a, x, 0)
        out_b, gx_b = _train_step(b, x, 0)
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
        _assert_same_gradient(gx_b, gx_a)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        _assert_same_gradient(q.grad, p.grad)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_memory_efficient_with_frozen_weights_and_channels_last() -> None:
    a = _dense_block(2, False).train()
    b = copy.deepcopy(a)
    b.memory_efficient = True
    frozen = ["denselayer2.conv1.weight", "denselayer1.norm2.bias"]
    for m in (a, b):
        for name in frozen:
            m.get_parameter(name).requires_grad_(False)
    x = torch.randn(2, 5, 6, 6).to(memory_format=torch.channels_last)
    out_a, gx_a = _train_step(a, x, 0)
    out_b, gx_b = _train_step(b, x, 0)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    _assert_same_gradient(gx_b, gx_a)
    assert all(b.get_parameter(name).grad is None for name in frozen)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        if p.requires_grad:
            _assert_same_gradient(q.grad, p.grad)


def test_other_layers_fall_back_to_checkpointing() -> None:
    def make(c: int, k: int) -> nn.Module:
        return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, k, 3, padding=1))

    a = DenseBlock(make, 3, 4, False, in_channels=5).train()
    b = copy.deepcopy(a)
    b.memory_efficient = True
    x = torch.randn(2, 5, 6, 6)
    out_a, gx_a = _train_step(a, x, 0)
    out_b, gx_b = _train_step(b, x, 0)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(gx_b, gx_a)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0, msg=key)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(storages.values())


def test_memory_efficient_keeps_far_fewer_tensors() -> None:
    model = DenseNet(16, (6, 6), 32, num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    full = _saved_bytes(model, x)
    model.memory_efficient = True
    assert _saved_bytes(model, x) < 0.5 * full


def test_densenet_bc_matches_the_paper() -> None:
    model = densenet_bc()  # L=100, k=12: 3 blocks of 16 bottleneck layers, compression 0.5
    assert sum(p.numel() for p in model.parameters()) == 769_162  # "0.8M" in Huang et al.
    assert [len(b.layers()) for b in model.blocks()] == [16, 16, 16]
    assert model.features.conv0.out_channels == 24  # 2k
    assert model.features.transition1.conv.out_channels == (24 + 16 * 12) // 2
    assert model.classifier.in_features == 342
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("depth", "nearest"), [(101, r"\[100, 106\]"), (7, r"\[10, 16\]")])
def test_densenet_bc_rejects_invalid_depths(depth: int, nearest: str) -> None:
    with pytest.raises(ValueError, match=rf"depth={depth}.*multiple of 6.*{nearest}"):
        densenet_bc(depth=depth)


@pytest.mark.parametrize(
    "kwargs",
    [{"block_config": ()}, {"block_config": (2, 0)}, {"compression": 0.0}, {"drop_rate": 1.0}],
)
def test_densenet_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="DenseNet"):
        DenseNet(**kwargs)


def test_plain_twin_layers_see_only_the_previous_output() -> None:
    plain = densenet_bc(depth=22, skip=False).eval()  # 3 layers per block, k=12, 24 in
    assert not any(b.skip_enabled for b in plain.blocks())
    seen: list[torch.Tensor] = []
    block = plain.features.denseblock1
    block.denselayer3.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        out = plain(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    (cat,) = seen
    assert cat.shape[1] == 24 + 2 * 12
    assert not cat[:, : 24 + 12].any()  # block input and layer 1: zeros
    assert cat[:, 24 + 12 :].abs().sum() > 0  # layer 2's output


def test_plain_twin_equals_skips_disabled_with_the_same_weights() -> None:
    model = densenet_bc(depth=22).eval()
    plain = densenet_bc(depth=22, skip=False).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        with sk.skips_disabled(model):
            off = model(x)
        torch.testing.assert_close(off, plain(x), rtol=0, atol=0)
    assert not torch.equal(off, ref)
    assert all(b.skip_enabled for b in model.blocks())  # restored on exit


def test_in_channels_and_pickling() -> None:
    model = densenet_bc(depth=22, in_channels=1, num_classes=3, memory_efficient=True).eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert clone.memory_efficient


def test_memory_efficient_under_cpu_autocast_falls_back_to_checkpointing() -> None:
    a = _dense_block(2, False).train()
    b = copy.deepcopy(a)
    b.memory_efficient = True
    x = torch.randn(2, 5, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_a, gx_a = _train_step(a, x, 0)
        out_b, gx_b = _train_step(b, x, 0)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(gx_b, gx_a)


def test_memory_efficient_training_uses_the_one_tensor_layer_function() -> None:
    block = _dense_block(2, True).train()
    out = block(torch.randn(2, 5, 6, 6, requires_grad=True))
    todo, seen = [out.grad_fn], set()
    while todo:  # every node of the backward graph
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [n for n, _ in node.next_functions]
    kinds = [type(node).__name__ for node in seen]
    assert kinds.count("DenseLayerFunctionBackward") == 3, kinds  # one per layer
