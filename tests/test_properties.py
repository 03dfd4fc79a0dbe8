"""Property: for any body, a Residual either returns the right shape with gradients through
both paths, or raises ShapeMismatchError — never any other exception."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import skipkit as sk

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
UPCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MERGES = ["add", "concat", "gate", "rezero", "layerscale", "mul"]
SHORTCUTS = ["auto", "auto", "project", "pad", "avgdown", "resample", "identity"]


@st.composite
def cases(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...], str, str]:
    rank = draw(st.integers(2, 5))
    # Batch >= 2: a projection shortcut ends in BatchNorm, which (like any train-mode BN)
    # rejects one value per channel.
    n = draw(st.integers(2, 3))
    c_in = draw(st.integers(1, 6))
    c_out = draw(st.sampled_from([c_in, draw(st.integers(1, 8))]))
    merge = draw(st.sampled_from(MERGES))
    shortcut = draw(st.sampled_from(SHORTCUTS))
    kind = draw(st.sampled_from(["linear", "conv", "upconv", "flatten"]))
    if rank == 2 or kind == "linear":
        middle = tuple(draw(st.lists(st.integers(1, 5), min_size=rank - 2, max_size=rank - 2)))
        return nn.Linear(c_in, c_out), (n, *middle, c_in), merge, shortcut
    dims = rank - 2
    spatial = tuple(draw(st.lists(st.integers(1, 9), min_size=dims, max_size=dims)))
    shape = (n, c_in, *spatial)
    if kind == "flatten":
        return nn.Flatten(), shape, merge, shortcut
    k = draw(st.sampled_from([1, 3]))
    s = draw(st.integers(1, 4))
    if kind == "upconv":
        return UPCONV[dims](c_in, c_out, s, stride=s), shape, merge, shortcut
    pad = draw(st.sampled_from([0, k // 2]))
    if any(size + 2 * pad < k for size in spatial):
        pad = k // 2
    return CONV[dims](c_in, c_out, k, stride=s, padding=pad), shape, merge, shortcut


def _expected_shape(
    out: tuple[int, ...], x: tuple[int, ...], merge: str, block: sk.Residual
) -> tuple[int, ...]:
    if merge != "concat":
        return out
    d = 1 if block.layout != "NLC" or len(out) == 2 else len(out) - 1
    return (*out[:d], out[d] + x[d], *out[d + 1 :])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.booleans())
def test_residual_fits_or_raises_shape_mismatch(
    case: tuple[nn.Module, tuple[int, ...], str, str], planned_early: bool
) -> None:
    body, shape, merge, shortcut = case
    x = torch.randn(shape, requires_grad=True)
    try:
        block = sk.Residual(
            body, merge=merge, shortcut=shortcut, in_shape=shape if planned_early else None
        )
        y = block(x)
    except sk.ShapeMismatchError as err:
        assert isinstance(err, ValueError) and "Fix:" in str(err)
        event("ShapeMismatchError")
        return
    event(f"fits: {merge}")
    out = body(x).shape
    assert y.shape == _expected_shape(tuple(out), shape, merge, block)
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in block.parameters():
        assert p.grad is not None
    # The skip path carries gradient: it differs from the gradient through the body alone.
    grad_both = x.grad.clone()
    x.grad = None
    with sk.skips_disabled(block):
        block(x).square().sum().backward()
    assert x.grad is not None
    assert not torch.equal(grad_both, x.grad) or torch.count_nonzero(grad_both) == 0
