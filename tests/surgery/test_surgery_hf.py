"""Surgery on Hugging Face GPT-2 and BERT, built from small configs with random weights.

The wrapper must behave as the model: ``config``, ``device``, ``generate`` (whose loop calls
the model once per token: one pass each), ``save_pretrained`` of the inner model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint
from torch import nn

import skipkit as sk

transformers = pytest.importorskip("transformers")


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=2,
        vocab_size=50,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=32,
    )
    return transformers.BertModel(cfg).eval()


IDS = torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def _open(net: sk.surgery.Grafted) -> None:
    with torch.no_grad():
        for p in net.skips.parameters():
            p.copy_(torch.full_like(p, 0.5))


def test_gpt2_identity_api_and_generate() -> None:
    model = _gpt2()
    net = sk.add_skip(model, "transformer.h.0", "transformer.h.2", example=IDS)
    torch.testing.assert_close(net(IDS).logits, model(IDS).logits, rtol=0, atol=0)
    assert net.config.n_layer == 3 and net.device == torch.device("cpu")
    kw = {"max_new_tokens": 4, "do_sample": False, "attention_mask": torch.ones_like(IDS)}
    kw |= {"return_dict_in_generate": True, "output_logits": True}

    def logits(gen: object) -> torch.Tensor:
        return torch.stack(gen.logits, dim=1)  # type: ignore[attr-defined]

    torch.testing.assert_close(logits(net.generate(IDS, **kw)), logits(model.generate(IDS, **kw)))
    _open(net)
    gen = net.generate(IDS, **kw)
    # generate (with its KV cache: one pass per token) equals a greedy loop over full passes
    ids, steps = IDS, []
    with torch.no_grad():
        for _ in range(4):
            steps.append(net(ids).logits[:, -1])
            ids = torch.cat([ids, steps[-1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen.sequences, ids)
    torch.testing.assert_close(logits(gen), torch.stack(steps, dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(net.model.generate(IDS, **kw)), logits(gen))  # its own too
    assert not torch.allclose(logits(gen), logits(model.generate(IDS, **kw)), atol=1e-3)


def test_gpt2_trains_round_trips_and_switches_off() -> None:
    model = _gpt2()
    net = sk.add_skip(model, "transformer.h.0", "transformer.h.2", example=IDS).train()
    net(IDS, labels=IDS).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.skips.parameters())
    net.eval()
    _open(net)
    y = net(IDS).logits
    fresh = sk.add_skip(_gpt2(), "transformer.h.0", "transformer.h.2", example=IDS)
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(IDS).logits, y, rtol=0, atol=0)
    with sk.skips_disabled(net):
        torch.testing.assert_close(net(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_bert_with_an_attention_mask() -> None:
    model = _bert()
    ids = torch.randint(1, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    net = sk.add_skip(model, "embeddings", "encoder.layer.1", example=inputs)
    ref = model(**inputs).last_hidden_state
    torch.testing.assert_close(net(**inputs).last_hidden_state, ref, rtol=0, atol=0)
    _open(net)
    y = net(**inputs).last_hidden_state
    # the skip adds 0.5 * embeddings to layer 1's output, per token, padding or not
    _, feats = sk.taps(model, ["embeddings", "encoder.layer.1"], **inputs)
    layer1 = feats["encoder.layer.1"]
    layer1 = layer1[0] if isinstance(layer1, tuple) else layer1
    assert not torch.allclose(y, ref)
    assert y.shape == ref.shape == layer1.shape
    assert net.skips[0].adapter.gain.shape == (32,)  # per hidden feature (features last)


def test_save_pretrained_saves_the_inner_model_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _bert()
    net = sk.add_skip(model, "embeddings", "encoder.layer.1", example={"input_ids": IDS})
    _open(net)
    with caplog.at_level(logging.WARNING, logger="skipkit.surgery"):
        net.save_pretrained(tmp_path)
    assert "the 1 added skip(s) are in net.skips" in caplog.text
    again = transformers.BertModel.from_pretrained(tmp_path).eval()
    want = model(input_ids=IDS).last_hidden_state
    torch.testing.assert_close(again(input_ids=IDS).last_hidden_state, want)


def test_hf_gradient_checkpointing_is_refused() -> None:
    model = _gpt2()
    net = sk.add_skip(model, "transformer.h.0", "transformer.h.2", example=IDS)
    # transformers 5 renamed gradient_checkpointing_enable; both are refused
    name = next(
        n
        for n in ("activation_checkpointing_enable", "gradient_checkpointing_enable")
        if hasattr(model, n)
    )
    with pytest.raises(ValueError, match=rf"{name}: activation checkpointing recomputes"):
        getattr(net, name)()
    getattr(model, name)()
    with pytest.raises(ValueError, match=r"checkpointing is on in GPT2LMHeadModel"):
        sk.add_skip(model, "transformer.h.0", "transformer.h.2", example=IDS)


def test_torch_checkpoint_recompute_in_backward_says_why() -> None:
    class Ckpt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return torch.utils.checkpoint.checkpoint(self.b, h, use_reentrant=False)

    x = torch.randn(2, 4, requires_grad=True)
    net = sk.add_skip(Ckpt(), "a", "b", example=x)
    out = net(x).sum()
    with pytest.raises(RuntimeError, match=r"a -> b: dst 'b' ran again during the backward pass"):
        out.backward()
