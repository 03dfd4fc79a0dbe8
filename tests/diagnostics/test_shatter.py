"""Shattered gradients (Balduzzi et al. 2017): skipkit.diagnostics.shattering."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.diagnostics import Shattering, plot_shattering, shattering


def _mlp(depth: int, width: int = 32, seed: int = 0) -> nn.Sequential:
    """A linear-ReLU MLP of ``depth`` residual blocks (He init); its plain twin is the same
    model inside ``skips_disabled``."""
    torch.manual_seed(seed)
    blocks = [sk.Residual(nn.Sequential(nn.Linear(width, width), nn.ReLU())) for _ in range(depth)]
    model = nn.Sequential(nn.Linear(16, width), *blocks, nn.Linear(width, 1))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def test_linear_model_gradients_are_perfectly_correlated() -> None:
    torch.manual_seed(0)
    r = shattering(nn.Linear(16, 3), torch.randn(3, 16), points=32, max_lag=10)
    assert r.correlation == [1.0] * 11
    assert r.decay_lag() is None
    assert r.lines == 3 and r.points == 32


def test_deep_plain_mlp_shatters_faster_than_its_residual_twin() -> None:
    model = _mlp(30)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    res = shattering(model, x, points=64, max_lag=12)
    with sk.skips_disabled(model):
        plain = shattering(model, x, points=64, max_lag=12)
    assert all(p < r for p, r in zip(plain.correlation[1:], res.correlation[1:], strict=True))
    assert plain.at(1) < 0.85 < 0.95 < res.at(1)
    assert plain.decay_lag(0.5) is not None and res.decay_lag(0.5) is None


def test_plain_correlation_falls_with_depth() -> None:
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    lag1 = []
    for depth in (2, 10, 30):
        model = _mlp(depth)
        with sk.skips_disabled(model):
            lag1.append(shattering(model, x, points=64, max_lag=4).at(1))
    assert lag1[0] > lag1[1] > lag1[2]


def test_reproducible_restores_mode_and_independent_of_batch_size() -> None:
    model = _mlp(6).train()
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    a = shattering(model, x, points=40, seed=3)
    b = shattering(model, x, points=40, seed=3, batch_size=7)
    assert model.training
    assert a.correlation == pytest.approx(b.correlation, abs=1e-9)
    assert shattering(model, x, points=40, seed=3).correlation == a.correlation
    assert shattering(model, x, points=40, seed=4).correlation != a.correlation


def test_offsets_are_the_spacing_of_the_line() -> None:
    r = shattering(nn.Linear(4, 2), torch.randn(1, 4), points=11, radius=0.5, max_lag=3)
    assert r.offsets == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_to_dict_is_json_and_plot_writes(tmp_path) -> None:
    model = _mlp(4)
    r = shattering(model, torch.randn(2, 16), points=16, name="residual")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["correlation"] == r.correlation and d["summary"]["lag1"] == r.at(1)
    assert isinstance(r, Shattering)
    fig = plot_shattering([r, r], tmp_path / "s.png", labels=["residual", "plain"])
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert len(fig.axes[0].lines) == 3  # two curves and the zero line


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"x": torch.randn(3, 1)}, "at least 2 entries"),
        ({"x": torch.randn(5)}, "batch of line centres"),
        ({"points": 2}, "points must be >= 3"),
        ({"radius": 0.0}, "radius must be > 0"),
        ({"max_lag": 40}, "max_lag must be in"),
    ],
)
def test_bad_arguments(kw, match) -> None:
    args = {"x": torch.randn(2, 4), "points": 16, **kw}
    with pytest.raises(ValueError, match=match):
        shattering(nn.Linear(4, 2), **args)
