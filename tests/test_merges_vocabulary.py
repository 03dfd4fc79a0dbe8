"""One merge vocabulary: a merge string is one formula in the core, the models and surgery,
and list_skips reports the name and the formula actually used."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.merges import MERGES, Merge, resolve_merge
from skipkit.models import create
from skipkit.models.unet import LongSkip
from skipkit.surgery import AddedSkip, add_skip, list_skips

T = torch.Tensor


def _factor(m: Merge) -> T:
    assert isinstance(m, sk.Scale) and m.alpha is not None
    return m.alpha.view(1, -1) if m.per_channel else m.alpha


def _transform(m: Merge, s: T) -> T:
    assert isinstance(m, sk.Gate | sk.TanhGate) and m.transform is not None
    out: T = m.transform(s)
    return out


def _gate(m: Merge, s: T, b: T) -> T:
    t = torch.sigmoid(_transform(m, s))
    return t * b + (1.0 - t) * s


def _concat(m: Merge, s: T, b: T) -> T:
    assert isinstance(m, sk.Concat)
    y = torch.cat([b, s], 1)
    return y if m.reduce is None else m.reduce(y)


def _weighted(m: Merge, s: T, b: T) -> T:
    assert isinstance(m, sk.WeightedSum)
    return m.weights[0] * s + m.weights[1] * b


# name -> (formula as reported, the formula written by hand on (N, C) tensors)
FORMULAS: dict[str, tuple[str, Callable[[Merge, T, T], T]]] = {
    "add": ("s + b", lambda m, s, b: s + b),
    "concat": ("cat([b, s], C)", _concat),
    "mul": ("s * b", lambda m, s, b: s * b),
    "film": ("b * (1 + s)", lambda m, s, b: b * (1.0 + s)),
    "gate": ("T*b + (1 - T)*s, T = sigmoid(W s + c)", _gate),
    "tanh_gate": ("b + tanh(W s + c) * s", lambda m, s, b: b + torch.tanh(_transform(m, s)) * s),
    "rezero": ("s + α*b", lambda m, s, b: s + _factor(m) * b),
    "skipinit": ("s + α*b", lambda m, s, b: s + _factor(m) * b),
    "layerscale": ("s + γ_c*b", lambda m, s, b: s + _factor(m) * b),
    "rezero_skip": ("b + α*s", lambda m, s, b: b + _factor(m) * s),
    "layerscale_skip": ("b + γ_c*s", lambda m, s, b: b + _factor(m) * s),
    "weighted": ("a*s + w*b", _weighted),
}
CAN_START_AS_B = [
    "add",
    "concat",
    "film",
    "tanh_gate",
    "rezero_skip",
    "layerscale_skip",
    "weighted",
]


def _move_off_init(module: nn.Module) -> None:
    """Random parameters, so that no term of a formula hides behind a 0 or 1 at init."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def test_every_merge_string_has_a_formula_and_names_itself() -> None:
    assert set(FORMULAS) == set(MERGES)
    for name, (formula, _) in FORMULAS.items():
        m = resolve_merge(name)
        assert (m.name, m.formula) == (name, formula)
    assert sk.Concat(4).formula == "R(cat([b, s], C))"
    assert sk.surgery.Modulate is sk.Film  # the surgery name of the FiLM merge, kept


@pytest.mark.parametrize("name", sorted(MERGES))
def test_core_residual_computes_the_formula_exactly(name: str) -> None:
    body = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    block = sk.Residual(body, merge=name, in_shape=(3, 6))
    _move_off_init(block.merge)
    x = torch.randn(3, 6)
    expected = FORMULAS[name][1](block.merge, x, body(x))  # identity shortcut: s = x
    assert torch.equal(block(x), expected)
    info = block.describe()
    assert (info.merge, info.formula) == (name, FORMULAS[name][0])


@pytest.mark.parametrize("name", sorted(MERGES))
def test_added_skip_computes_the_same_formula_exactly(name: str) -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 6)).eval()
    x = torch.randn(3, 8)
    net = add_skip(model, "1", "2", merge=name, example=x, zero_init=False)
    (skip,) = [m for m in net.modules() if isinstance(m, AddedSkip)]
    _move_off_init(skip.merge)
    h = model[1](model[0](x))
    s, b = skip.adapter(h), model[2](h)  # the adapter of a (3, 6) -> (3, 6) skip: identity
    assert isinstance(skip.adapter, nn.Identity)
    with torch.no_grad():
        assert torch.equal(net(x), FORMULAS[name][1](skip.merge, s, b))
    info = list_skips(net)[0]
    # surgery's concat is reduced back to dst's width: Concat(out_channels=6)'s formula
    formula = "R(cat([b, s], C))" if name == "concat" else FORMULAS[name][0]
    assert (info.merge, info.formula) == (name, formula)


@pytest.mark.parametrize("name", CAN_START_AS_B)
def test_zero_init_starts_exactly_as_the_model(name: str) -> None:
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),
    )
    vec, img = torch.randn(4, 8), torch.randn(2, 3, 8, 8)
    for model, src, dst, x in (
        (mlp, "1", "2", vec),  # (4, 16) -> (4, 12): a zero Linear
        (mlp, "1", "", vec),  # into the model's output
        (cnn, "0", "2", img),  # (2, 8, 8, 8) -> (2, 16, 4, 4): conv with stride 2 + BN
        (cnn, "2", "4", img),  # same shape: an identity adapter (+ a gain for add / film)
    ):
        model.eval()
        net = add_skip(model, src, dst, merge=name, example=x).eval()
        with torch.no_grad():
            diff = (net(x) - model(x)).abs().max().item()
        assert diff == 0.0, (src, dst, diff)


def test_list_skips_reports_names_and_formulas_of_model_blocks() -> None:
    resnet = create("resnet20")
    infos = list_skips(resnet)
    assert {(i.merge, i.formula) for i in infos} == {("add", "s + b")}
    dense = create("densenet_bc")
    block = next(i for i in list_skips(dense) if i.kind == "DenseBlock")
    # DenseNet's own concat (the input first): no string builds it, so its class names it
    assert (block.merge, block.formula) == ("DenseMerge", "cat([s, b], C)")
    rezero = create("residual_mlp", in_features=4, out_features=2, width=8, depth=2, merge="rezero")
    assert {(i.merge, i.formula) for i in list_skips(rezero)} == {("rezero", "s + α*b")}
    crop = LongSkip("add", "crop")
    assert (crop.describe().merge, crop.describe().formula) == ("add", "crop(s) + b")
    skipinit = sk.Residual(nn.Linear(3, 3), merge="skipinit").describe()
    assert (skipinit.merge, skipinit.formula) == ("skipinit", "s + α*b")


def test_scale_on_rejects_other_values() -> None:
    with pytest.raises(ValueError, match=r"Scale\(on=...\) must be 'branch' or 'skip', got 'body'"):
        sk.Scale(0.0, on="body")
    with pytest.raises(NotImplementedError, match=r"merge 'rezero' \(s \+ α\*b\) has no param"):
        resolve_merge("rezero").start_as_branch()
