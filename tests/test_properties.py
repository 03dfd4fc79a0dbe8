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


# ----------------------------------------------------- constructor arguments and dtypes

NUMBERS = st.one_of(
    st.integers(-3, 5),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["0.1", None, True, [1]]),
)


def _refused_with_a_message(err: Exception, name: str) -> None:
    assert isinstance(err, ValueError | TypeError), repr(err)
    assert name in str(err), (name, str(err))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["drop_path", "num_layers", "growth", "in_channels", "gate_bias", "init"]),
    NUMBERS,
)
def test_numeric_constructor_arguments_are_validated(name: str, value: object) -> None:
    build = {
        "drop_path": lambda v: sk.Residual(nn.Linear(3, 3), drop_path=v),
        "num_layers": lambda v: sk.DenseBlock(None, v, 2, in_channels=3),
        "growth": lambda v: sk.DenseBlock(None, 2, v, in_channels=3),
        "in_channels": lambda v: sk.DenseBlock(None, 2, 2, in_channels=v),
        "gate_bias": lambda v: sk.Highway(nn.Linear(3, 3), gate_bias=v),
        "init": lambda v: sk.Scale(v),
    }[name]
    try:
        module = build(value)
    except Exception as err:
        _refused_with_a_message(err, name)
        event(f"{name}: refused")
        return
    event(f"{name}: accepted")
    if name == "in_channels" and value is None:
        assert isinstance(module, sk.DenseBlock) and not module.ready  # built at first use
    elif name in ("num_layers", "growth", "in_channels"):
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
    elif name == "drop_path":
        assert isinstance(value, int | float) and 0 <= value < 1
    else:
        assert isinstance(value, int | float) and abs(float(value)) < float("inf")
    assert isinstance(module, nn.Module)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@st.composite
def dtype_cases(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor, bool, str]:
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.sampled_from([0, 2, 3]))
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["linear", "conv", "pool", "dense"]))
    memory = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    if kind == "linear":
        body: nn.Module = nn.Linear(c_in, c_out)
        x = torch.randn(n, 3, c_in)
    else:
        x = torch.randn(n, c_in, 5, 6)
        body = {
            "conv": nn.Conv2d(c_in, c_out, 3, stride=draw(st.integers(1, 2)), padding=1),
            "pool": nn.AvgPool2d(2),  # no tensors: the parts follow the input's dtype
            "dense": sk.DenseLayer(c_in, c_out, bn_size=2),
        }[kind]
        if memory == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    if memory == "strided":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same shape, not contiguous
    return body.to(dtype), x.to(dtype), draw(st.booleans()), draw(st.sampled_from(MERGES))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype_cases())
def test_any_dtype_batch_and_memory_layout_fits_or_raises_ours(
    case: tuple[nn.Module, torch.Tensor, bool, str],
) -> None:
    body, x, planned_early, merge = case
    body.eval()
    try:
        with torch.no_grad():
            out = body(x)
    except (RuntimeError, NotImplementedError):
        event("the body itself cannot run this dtype on this device")
        return
    try:
        block = sk.Residual(body, merge=merge, in_shape=tuple(x.shape) if planned_early else None)
        block.eval()
        with torch.no_grad():
            y = block(x)
    except (sk.ShapeMismatchError, ValueError, TypeError) as err:
        assert str(err), "an error without a message"
        event(f"refused: {type(err).__name__}")
        return
    event(f"fits: {x.dtype}")
    assert y.dtype == x.dtype
    expected = _expected_shape(tuple(out.shape), tuple(x.shape), merge, block)
    assert y.shape == expected
