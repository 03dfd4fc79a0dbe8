from __future__ import annotations

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.merges import MERGES, resolve_merge


def _ready(merge: sk.Merge, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> sk.Merge:
    merge.setup(shape, shape, None, dtype=dtype)
    return merge


def test_add_mul_exact() -> None:
    s, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    assert torch.equal(sk.Add()(s, b), torch.tensor([[4.0, 1.0]]))
    assert torch.equal(sk.Mul()(s, b), torch.tensor([[3.0, -2.0]]))
    assert torch.equal(sk.Add().without_skip(b), b)
    assert torch.equal(sk.Mul().without_skip(b), b)


def test_concat_puts_branch_first() -> None:
    s, b = torch.ones(1, 2, 3), torch.zeros(1, 1, 3)
    m = sk.Concat()
    m.setup(s.shape, b.shape, "NC")
    assert torch.equal(m(s, b), torch.cat([b, s], dim=1))
    # the skip's width is kept for the plain twin, for any batch size
    assert m.without_skip(torch.zeros(5, 1, 3)).shape == (5, 3, 3)
    assert m.out_shape(s.shape, b.shape) == (1, 3, 3)
    assert torch.equal(m.without_skip(b), torch.cat([b, torch.zeros_like(s)], dim=1))


def test_concat_features_last_and_reduce() -> None:
    s, b = torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    m = sk.Concat(3)
    m.setup(s.shape, b.shape, "NLC")
    assert isinstance(m.reduce, nn.Linear) and m.reduce.in_features == 10
    assert torch.equal(m(s, b), m.reduce(torch.cat([b, s], dim=-1)))
    conv = sk.Concat(8)
    conv.setup((1, 4, 3, 3), (1, 4, 3, 3), "NC")
    assert isinstance(conv.reduce, nn.Conv2d) and conv.reduce.kernel_size == (1, 1)


def test_concat_mismatch_raises() -> None:
    m = sk.Concat()
    with pytest.raises(sk.ShapeMismatchError, match="other dims equal"):
        m.setup((1, 2, 4, 4), (1, 2, 5, 5), "NC")
    m.setup((1, 2, 4, 4), (1, 2, 4, 4), "NC")
    with pytest.raises(sk.ShapeMismatchError, match="other dims equal"):
        m(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 3, 3))


def test_gate_formula_and_bias_init() -> None:
    g = _ready(sk.Gate(-2.0), (3, 4))
    assert isinstance(g.transform, nn.Linear)
    assert torch.equal(g.transform.bias, torch.full((4,), -2.0))
    with torch.no_grad():
        g.transform.weight.zero_()
    s, b = torch.randn(3, 4), torch.randn(3, 4)
    t = torch.sigmoid(torch.tensor(-2.0))
    assert torch.allclose(g(s, b), t * b + (1 - t) * s)
    # the plain twin of a highway is the plain layer: the gate goes with the skip
    assert torch.equal(g.without_skip(b), b)


def test_gate_conv_transform() -> None:
    g = _ready(sk.Gate(-1.0), (2, 3, 5, 5))
    assert isinstance(g.transform, nn.Conv2d) and g.transform.kernel_size == (1, 1)


def test_rezero_starts_as_identity() -> None:
    m = resolve_merge("rezero")
    s, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(m(s, b), s)
    with torch.no_grad():
        assert isinstance(m, sk.Scale) and m.alpha is not None
        m.alpha.fill_(0.5)
    assert torch.allclose(m(s, b), s + 0.5 * b)


def test_layerscale_per_channel() -> None:
    m = resolve_merge("layerscale")
    m.setup((2, 3, 4, 4), (2, 3, 4, 4), "NC")
    assert isinstance(m, sk.Scale) and m.alpha is not None and m.alpha.shape == (3,)
    assert torch.equal(m.alpha, torch.full((3,), 1e-5))
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([1.0, 2.0, 3.0]))
    s, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert torch.equal(m(s, b)[0, :, 0, 0], torch.tensor([1.0, 2.0, 3.0]))
    seq = resolve_merge("layerscale")
    seq.setup((2, 7, 5), (2, 7, 5), "NLC")
    assert seq(torch.zeros(2, 7, 5), torch.ones(2, 7, 5)).shape == (2, 7, 5)


def test_weighted_sum() -> None:
    m = sk.WeightedSum(2.0, 3.0)
    s, b = torch.ones(1, 2), torch.ones(1, 2)
    assert torch.equal(m(s, b), torch.full((1, 2), 5.0))
    assert torch.equal(m.without_skip(b), torch.full((1, 2), 3.0))


@pytest.mark.parametrize("name", ["add", "mul", "gate", "rezero", "layerscale", "weighted"])
def test_equal_shape_merges_reject_mismatch(name: str) -> None:
    m = resolve_merge(name)
    with pytest.raises(sk.ShapeMismatchError, match="equal shapes"):
        m.setup((2, 3), (2, 4), None)


@pytest.mark.parametrize("name", sorted(MERGES))
def test_gradcheck_float64(name: str) -> None:
    m = resolve_merge(name)
    m.setup((2, 3, 4), (2, 3, 4), "NC", dtype=torch.float64)
    m = m.double()
    for p in m.parameters():  # move off the init so every term is exercised
        with torch.no_grad():
            p.add_(0.3)
    s = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (s, b))


def test_resolve_merge_errors() -> None:
    with pytest.raises(ValueError, match="unknown merge 'sum'"):
        resolve_merge("sum")
    with pytest.raises(TypeError, match="merge must be"):
        resolve_merge(nn.ReLU())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        sk.Concat(0)
