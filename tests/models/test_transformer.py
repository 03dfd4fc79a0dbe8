"""The transformer family: references, causality, plain twin, and the rest of skipkit."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import skipkit as sk
from skipkit.models import create, list_models
from skipkit.models.transformer import RESIDUALS, Transformer

V, T = 13, 8


def lm(residual: str = "add", **kw: object) -> Transformer:
    torch.manual_seed(0)
    args: dict[str, object] = dict(vocab_size=V, context=T, depth=2, width=16, heads=2)
    args.update(kw)
    model = create("transformer_lm", residual=residual, **args)
    assert isinstance(model, Transformer)
    return model


def classifier(residual: str = "add", **kw: object) -> Transformer:
    torch.manual_seed(0)
    args: dict[str, object] = dict(
        vocab_size=V, context=T, num_classes=3, depth=2, width=16, heads=2
    )
    args.update(kw)
    model = create("transformer_classifier", residual=residual, **args)
    assert isinstance(model, Transformer)
    return model


def tokens(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def test_registered() -> None:
    assert {"transformer_lm", "transformer_classifier"} <= set(list_models("transformer*"))


class NanoBlock(nn.Module):
    """nanoGPT's Block, written by hand: x + attn(ln_1(x)), x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(n, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        y = att.softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(n, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


def test_pre_norm_block_equals_the_hand_written_block() -> None:
    block = lm().blocks[0]
    ref = NanoBlock(16, 2)
    pairs = {
        "ln_1": block.attn.norm,
        "c_attn": block.attn.body.qkv,
        "c_proj": block.attn.body.proj,
        "ln_2": block.mlp.norm,
        "c_fc": block.mlp.body.fc,
        "mlp_proj": block.mlp.body.proj,
    }
    for name, module in pairs.items():
        getattr(ref, name).load_state_dict(module.state_dict())
    x = torch.randn(3, T, 16)
    torch.testing.assert_close(block(x), ref(x), atol=1e-5, rtol=1e-5)


def test_train_step_dispatches_the_hand_written_blocks_ops(
    assert_same_ops: Callable[..., int],
) -> None:
    # The block speed claim (benchmarks/bench_transformer.py, <= 1.02x) rests on this: the
    # Residual(norm="layer") blocks run exactly the ATen ops of the same submodules written
    # out by hand (x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))), forward and backward
    blocks = lm(depth=3, width=32, heads=4).blocks
    x = torch.randn(2, T, 32)

    def ours() -> None:
        blocks.zero_grad(set_to_none=True)  # both start without .grad (no accumulation)
        h = x
        for block in blocks:
            h = block(h)
        h.square().mean().backward()

    def hand_written() -> None:
        blocks.zero_grad(set_to_none=True)
        h = x
        for b in blocks:
            h = h + b.attn.body(b.attn.norm(h))
            h = h + b.mlp.body(b.mlp.norm(h))
        h.square().mean().backward()

    assert assert_same_ops(ours, hand_written) > 100


@pytest.mark.parametrize("residual", RESIDUALS)
def test_causal_a_future_token_does_not_change_earlier_logits(residual: str) -> None:
    model = lm(residual).eval()
    x = tokens()
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % V
    a, b = model(x), model(y)
    assert a.shape == (4, T, V)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize(
    ("residual", "norm_at"), [("add", "post"), ("deepnorm", None), ("mhc", None)]
)
def test_plain_twin_equals_skips_disabled(residual: str, norm_at: str | None) -> None:
    model = lm(residual, norm_at=norm_at)
    twin = lm(residual, norm_at=norm_at, skip=False)
    twin.load_state_dict(model.state_dict())
    x = tokens()
    with sk.skips_disabled(model):
        torch.testing.assert_close(model(x), twin(x))
    assert not torch.allclose(model(x), twin(x))
    assert all(not s.enabled for s in sk.list_skips(twin))


def test_key_padding_mask_hides_padding() -> None:
    model = classifier("hyper").eval()
    x = tokens()
    pad = torch.zeros(4, T, dtype=torch.bool)
    pad[:, 6:] = True
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 3) % V
    torch.testing.assert_close(model(x, key_padding_mask=pad), model(y, key_padding_mask=pad))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"residual": "highway"}, ["residual='highway'", "mhc"]),
        ({"residual": "deepnorm", "norm_at": "pre"}, ["post-norm"]),
        ({"residual": "hyper", "norm_at": "post"}, ["pre-norm"]),
        ({"depth": 0}, ["depth=0"]),
        ({"heads": 3}, ["heads=3"]),
        ({"norm_at": "middle"}, ["norm_at='middle'"]),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        lm(**kwargs)  # type: ignore[arg-type]
    for w in words:
        assert w in str(info.value)


def test_too_long_a_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="context 8"):
        lm()(torch.zeros(1, T + 1, dtype=torch.long))


def test_trains_with_the_trainer(tmp_path: object) -> None:
    from torch.utils.data import TensorDataset

    from skipkit.train import Trainer

    x = tokens(64)
    y = (x[:, 0] % 3).long()
    data = TensorDataset(x, y)
    trainer = Trainer(
        classifier("mhc"),
        data,
        data,
        epochs=2,
        batch_size=16,
        optimizer="adamw",
        lr=3e-3,
        quiet=True,
        device="cpu",
    )
    history = trainer.fit()
    assert len(history) == 2 and all(math.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("residual", ["add", "mhc"])
def test_compiles_fullgraph(residual: str) -> None:
    model = lm(residual, depth=1)  # one block: mHC's unrolled Sinkhorn rounds compile slowly
    x = tokens()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    lm_loss(compiled(x), x).backward()


@pytest.mark.parametrize("residual", ["add", "hyper", "mhc"])
def test_gradient_flow(residual: str) -> None:
    from skipkit.diagnostics import gradient_flow

    model = lm(residual)
    x = tokens()
    flow = gradient_flow(model, (x, x), lm_loss)
    assert [s.path for s in flow.skips] == [
        f"blocks.{i}.{part}" for i in range(2) for part in ("attn", "mlp")
    ]
    assert all(s.in_grad_norm is not None and s.in_grad_norm > 0 for s in flow.skips)
    # the branch/shortcut balance too: the fused multi-stream forward must not hide the parts
    assert all(s.grad_ratio is not None and s.grad_ratio > 0 for s in flow.skips)
    assert all(p.grad is None for p in model.parameters())


def test_loss_landscape_and_advise() -> None:
    from skipkit.diagnostics import advise, loss_landscape

    model = classifier("layerscale")
    x = tokens(16)
    y = (x[:, 0] % 3).long()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    land = loss_landscape(model, (x, y), nn.CrossEntropyLoss(), dims=1, steps=3)
    assert land.loss.shape == (3,) and bool(torch.isfinite(torch.as_tensor(land.loss)).all())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    tips = advise(classifier("add", skip=False, depth=3), (x, y), nn.CrossEntropyLoss())
    assert isinstance(tips, list)


def test_surgery_lists_and_adds_skips() -> None:
    model = lm("mhc")
    infos = sk.list_skips(model)
    assert [i.path for i in infos] == [
        "blocks.0.attn",
        "blocks.0.mlp",
        "blocks.1.attn",
        "blocks.1.mlp",
    ]
    assert {i.kind for i in infos} == {"HyperConnection"}
    plain = lm("add", skip=False)
    x = tokens()
    grafted = sk.add_skip(plain, "blocks.0", "blocks.1", example=x)
    torch.testing.assert_close(grafted(x), plain(x))  # zero-initialised: same function at init
    assert len(sk.list_skips(grafted)) == len(sk.list_skips(plain)) + 1


@pytest.mark.parametrize("residual", ["hyper", "mhc"])
def test_lesion_deletes_each_multi_stream_branch(residual: str) -> None:
    from skipkit.diagnostics.lesion import lesion

    torch.manual_seed(0)
    model = create(
        "transformer_classifier", vocab_size=16, context=8, num_classes=3, depth=2, width=32,
        heads=4, residual=residual,
    )  # fmt: skip
    x, y = torch.randint(0, 16, (32, 8)), torch.randint(0, 3, (32,))
    result = lesion(model, (x, y))  # raises if a merge did not run (the fused forward)
    assert [b.name for b in result.blocks] == [
        f"blocks.{i}.{part}" for i in range(2) for part in ("attn", "mlp")
    ]
    assert all(b.loss != pytest.approx(result.loss) for b in result.blocks)
