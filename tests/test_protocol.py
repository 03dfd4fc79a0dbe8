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
    assert (info.kind, info.tap, info.shortcut, info.merge) == (
        "_Doubling",
        "input",
        "Identity",
        "Add",
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
