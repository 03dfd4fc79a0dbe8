"""The SkipModule protocol: four parts, one forward, a typed describe()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.skips import PendingShortcut


class _Doubling(sk.SkipModule):
    """A skip written against the protocol only: ``relu(2*x + x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.shortcut = nn.Identity()
        self.merge = sk.Add()
        self.post = nn.ReLU()

    def branch(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return 2 * x


def test_a_subclass_gets_forward_plain_twin_and_describe_from_the_parts() -> None:
    block = _Doubling()
    x = torch.randn(3, 4)
    assert torch.equal(block(x), torch.relu(3 * x))
    with sk.skips_disabled(block):
        assert torch.equal(block(x), torch.relu(2 * x))
    info = block.describe()
    assert isinstance(info, sk.SkipInfo)
    assert (info.kind, info.tap, info.shortcut, info.merge, info.formula) == (
        "_Doubling",
        "input",
        "Identity",
        "add",
        "s + b",
    )
    assert info.parameters == 0 and info.enabled and not info.added


def test_the_base_branch_must_be_implemented() -> None:
    class NoBranch(sk.SkipModule):
        def __init__(self) -> None:
            super().__init__()
            self.shortcut, self.merge = nn.Identity(), sk.Add()

    with pytest.raises(NotImplementedError, match="NoBranch must implement branch"):
        NoBranch()(torch.zeros(1))


class _Shift(nn.Module):
    def forward(self, x: torch.Tensor, shift: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return scale * (x + shift)


def test_residual_passes_extra_arguments_to_the_body_only() -> None:
    block = sk.Residual(_Shift())
    x, shift = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(block(x, shift, scale=3.0), x + 3.0 * (x + shift))
    assert isinstance(block.shortcut, nn.Identity)


def test_a_lazy_shortcut_is_a_pending_module_until_planned() -> None:
    block = sk.Residual(nn.Linear(4, 6), shortcut="project")
    assert isinstance(block.shortcut, PendingShortcut) and not block.ready
    assert block.describe().shortcut == "project"
    assert list(block.shortcut.parameters()) == []
    with pytest.raises(RuntimeError, match="has not been planned yet"):
        block.shortcut(torch.zeros(1, 4))
    block(torch.zeros(2, 4))
    assert isinstance(block.shortcut, nn.Linear) and block.ready
    assert block.describe().shortcut == "Linear"
    assert block.describe().parameters == 4 * 6 + 6


def test_highway_plain_twin_is_the_plain_layer() -> None:
    body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    block = sk.Highway(body, in_shape=(1, 4))
    x = torch.randn(3, 4)
    with sk.skips_disabled(block):
        assert torch.equal(block(x), body(x))


def test_list_skips_reports_describe_with_the_model_path() -> None:
    model = nn.Sequential(nn.Linear(3, 3), sk.Residual(nn.Linear(3, 3)))
    (info,) = sk.list_skips(model)
    assert (info.path, info.dst, info.kind) == ("1", "1", "Residual")
    assert sk.SkipInfo is sk.surgery.SkipInfo


def test_library_inputs_are_refused_with_the_argument_and_the_fix() -> None:
    with pytest.raises(TypeError, match=r"Residual\(drop_path\) must be a number in \[0, 1\)"):
        sk.Residual(nn.Linear(2, 2), drop_path="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Residual\(drop_path\)=-0.1 must be in \[0, 1\)"):
        sk.Residual(nn.Linear(2, 2), drop_path=-0.1)
    with pytest.raises(ValueError, match=r"DenseBlock\(in_channels\)=0 must be an int >= 1"):
        sk.DenseBlock(None, 2, 4, in_channels=0)
    with pytest.raises(ValueError, match=r"in_shape=.* needs a batch dim"):
        sk.Residual(nn.Linear(2, 2), in_shape=(4,))
    with pytest.raises(ValueError, match="layout='NLC'"):
        sk.Residual(nn.Linear(2, 2), layout="channels_last")


def test_a_dense_layer_of_the_wrong_width_is_a_shape_mismatch() -> None:
    block = sk.DenseBlock(lambda c, k: nn.Conv2d(c, k + 1, 1), 2, 3, in_channels=4)
    with pytest.raises(sk.ShapeMismatchError, match="must return \\(N, 3, \\*S\\)"):
        block(torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
def test_dense_block_default_layers_for_1d_2d_3d_maps(spatial: tuple[int, ...]) -> None:
    x = torch.randn(2, 4, *spatial)
    for block in (sk.DenseBlock(None, 2, 3), sk.DenseBlock(None, 2, 3, in_shape=x.shape)):
        assert block(x).shape == (2, 10, *spatial)
    if len(spatial) != 2:  # in_channels alone builds 2-D layers: a clear error, not torch's
        with pytest.raises(sk.ShapeMismatchError, match="pass in_shape"):
            sk.DenseBlock(None, 2, 3, in_channels=4)(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_in_shape_planning_uses_the_body_dtype_and_parameter_free_bodies_the_input(
    dtype: torch.dtype,
) -> None:
    block = sk.Residual(nn.Linear(4, 6).to(dtype), in_shape=(2, 4))
    assert block.ready and block.shortcut.weight.dtype == dtype
    assert block(torch.randn(3, 4, dtype=dtype)).dtype == dtype
    # no tensors in the body: the planned projection follows the input's dtype
    shuffle = sk.Residual(nn.PixelUnshuffle(2), in_shape=(2, 3, 4, 4))
    assert any(p.dtype == torch.float32 for p in shuffle.shortcut.parameters())
    y = shuffle(torch.randn(2, 3, 4, 4, dtype=dtype))
    assert y.dtype == dtype and y.shape == (2, 12, 2, 2)
    assert all(p.dtype == dtype for p in shuffle.shortcut.parameters())
