"""Residual for transformer sublayers: arguments reach the body, outputs of every shape, norm
placement, DeepNorm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import skipkit as sk
from skipkit._residual import deepnorm_init_

D = 16


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- arguments and outputs -----------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_is_self_attention(batch_first: bool) -> None:
    mha = nn.MultiheadAttention(D, 4, batch_first=batch_first)
    block = sk.Residual(mha)
    x = torch.randn(2, 5, D) if batch_first else torch.randn(5, 2, D)
    y = block(x)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, x + mha(x, x, x, need_weights=False)[0])


def test_attention_masks_reach_the_body_only() -> None:
    mha = nn.MultiheadAttention(D, 4, batch_first=True)
    block = sk.Residual(mha)
    x = torch.randn(2, 5, D)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    ref = x + mha(x, x, x, key_padding_mask=pad, attn_mask=causal, need_weights=False)[0]
    torch.testing.assert_close(block(x, key_padding_mask=pad, attn_mask=causal), ref)
    # is_causal alone builds the causal mask
    torch.testing.assert_close(
        block(x, is_causal=True), x + mha(x, x, x, attn_mask=causal, need_weights=False)[0]
    )
    y, weights = block(x, need_weights=True)
    assert y.shape == x.shape and weights.shape == (2, 5, 5)
    with pytest.raises(TypeError, match="by keyword"):
        block(x, pad)


def test_extra_arguments_reach_the_body_and_the_shortcut_sees_x() -> None:
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, scale: float, *, shift: float = 0.0) -> torch.Tensor:
            return x * scale + shift

    block = sk.Residual(Scaled())
    x = torch.randn(3, D)
    torch.testing.assert_close(block(x, 2.0, shift=1.0), x + (2 * x + 1))


def test_dict_output_joins_the_first_tensor_and_keeps_the_rest() -> None:
    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(D, D)

        def forward(self, x: torch.Tensor) -> dict[str, object]:
            return {"hidden": self.lin(x), "aux": torch.ones(1), "note": "kept"}

    block = sk.Residual(Body())
    x = torch.randn(2, D)
    out = block(x)
    assert type(out) is dict and list(out) == ["hidden", "aux", "note"]
    torch.testing.assert_close(out["hidden"], x + block.body.lin(x))
    assert out["note"] == "kept" and torch.equal(out["aux"], torch.ones(1))


def test_model_output_keeps_its_type_and_fields() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(D, D)

        def forward(self, x: torch.Tensor) -> BaseModelOutputWithPooling:
            h = self.lin(x)
            return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=h.mean(1))

    block = sk.Residual(Body())
    x = torch.randn(2, 4, D)
    out = block(x)
    assert isinstance(out, BaseModelOutputWithPooling)
    h = block.body.lin(x)
    torch.testing.assert_close(out.last_hidden_state, x + h)
    torch.testing.assert_close(out.pooler_output, h.mean(1))
    with sk.skips_disabled(block):
        torch.testing.assert_close(block(x).last_hidden_state, h)


def test_body_without_a_tensor_is_refused() -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "no tensor"

    with pytest.raises(TypeError, match="must return a tensor"):
        sk.Residual(Bad())(torch.randn(2, D))


# --- norm placement ------------------------------------------------------------------------


def test_pre_norm() -> None:
    block = sk.Residual(mlp(), norm="layer")
    x = torch.randn(2, 3, D)
    assert isinstance(block.norm, nn.LayerNorm)
    torch.testing.assert_close(block(x), x + block.body(block.norm(x)))


def test_post_norm_is_the_post_part() -> None:
    block = sk.Residual(mlp(), norm="rms", norm_at="post")
    x = torch.randn(2, 3, D)
    assert isinstance(block.post, nn.RMSNorm) and block.norm is None
    torch.testing.assert_close(block(x), block.post(x + block.body(x)))
    with sk.skips_disabled(block):
        torch.testing.assert_close(block(x), block.post(block.body(x)))


def test_sandwich_norm() -> None:
    block = sk.Residual(mlp(), norm="layer", norm_at="sandwich")
    x = torch.randn(2, 3, D)
    assert block.norm is not block.norm_out
    torch.testing.assert_close(block(x), x + block.norm_out(block.body(block.norm(x))))


def test_norm_module_is_used_as_given() -> None:
    norm = nn.LayerNorm(D, elementwise_affine=False)
    block = sk.Residual(mlp(), norm=norm)
    x = torch.randn(4, D)
    assert block.norm is norm
    torch.testing.assert_close(block(x), x + block.body(F.layer_norm(x, (D,))))


def test_norm_width_unknown_until_the_first_forward() -> None:
    body = nn.Sequential(nn.GELU(), nn.Linear(D, D))  # the first layer does not tell the width
    lazy = sk.Residual(body, norm="layer")
    assert not lazy.ready
    sk.materialize(lazy, torch.randn(2, D))
    assert lazy.ready and isinstance(lazy.norm, nn.LayerNorm) and lazy.norm.normalized_shape == (D,)
    planned = sk.Residual(nn.Sequential(nn.GELU(), nn.Linear(D, D)), norm="rms", in_shape=(1, D))
    assert planned.ready and isinstance(planned.norm, nn.RMSNorm)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"norm_at": "middle"}, ValueError, ["norm_at='middle'", "pre", "post", "sandwich"]),
        ({"norm": "batch"}, ValueError, ["norm='batch'", "layer", "rms"]),
        ({"norm": 3}, TypeError, ["norm", "int"]),
        ({"norm": nn.LayerNorm(D), "norm_at": "sandwich"}, ValueError, ["two norms"]),
        ({"norm": "layer", "norm_at": "post", "post": "relu"}, ValueError, ["post=None"]),
    ],
)
def test_bad_norm_arguments(kwargs: dict[str, object], error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        sk.Residual(mlp(), **kwargs)  # type: ignore[arg-type]
    for w in words:
        assert w in str(info.value)


def test_string_norm_refuses_a_channels_first_body() -> None:
    with pytest.raises(ValueError, match="channels-first"):
        sk.Residual(nn.Conv2d(4, 4, 3, padding=1), norm="layer")
    block = sk.Residual(nn.Conv2d(4, 4, 3, padding=1), norm=nn.GroupNorm(1, 4))
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), x + block.body(block.norm(x)))


# --- DeepNorm ------------------------------------------------------------------------------


def test_deepnorm_constants() -> None:
    dn = sk.deepnorm(6)
    assert dn.alpha == pytest.approx(12**0.25) and dn.beta == pytest.approx(48**-0.25)
    with pytest.raises(ValueError, match="depth=0"):
        sk.deepnorm(0)


def test_deepnorm_init_gains() -> None:
    torch.manual_seed(0)
    width = 256
    mha = nn.MultiheadAttention(width, 4)
    ffn = nn.Linear(width, width)
    body = nn.ModuleList([mha, ffn])
    beta = 0.25
    deepnorm_init_(body, beta)
    xavier = math.sqrt(2.0 / (2 * width))  # fan_in = fan_out = width
    w = mha.in_proj_weight.detach()
    # the packed projection's fans are (3·width, width); q/k rows keep gain 1, v rows beta
    qk_std = math.sqrt(2.0 / (width + 2 * width))
    v_std = beta * math.sqrt(2.0 / (width + width))
    assert float(w[: 2 * width].std()) == pytest.approx(qk_std, rel=0.05)
    assert float(w[2 * width :].std()) == pytest.approx(v_std, rel=0.05)
    assert float(ffn.weight.detach().std()) == pytest.approx(beta * xavier, rel=0.05)
    assert float(ffn.bias.detach().abs().max()) == 0.0
