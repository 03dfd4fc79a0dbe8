"""connect: A's intermediate outputs feed B; B's function is preserved at step 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.surgery import AddedSkip, Connected, add_skip, connect, list_skips, remove_skip


def added(net: nn.Module) -> list[AddedSkip]:
    """The added skips of ``net``, typed."""
    return [m for m in net.modules() if isinstance(m, AddedSkip)]


def encoder() -> nn.Sequential:
    """``(N, 3, 16, 16) -> (N, 16, 4, 4)``; stages at 16, 8, 4 pixels."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU()),
        nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()),
    )


def decoder() -> nn.Sequential:
    """``(N, 16, 4, 4) -> (N, 3, 16, 16)``."""
    return nn.Sequential(
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(16, 10, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(10, 6, 3, padding=1), nn.ReLU()),
        nn.Conv2d(6, 3, 1),
    )


def test_encoder_into_decoder_preserves_b_and_learns() -> None:
    enc, dec = encoder().eval(), decoder()
    x = torch.randn(2, 3, 16, 16)
    net = connect(enc, dec, {"1": "0", "0": "1"}, example=x, b_input="a_output", freeze_a=True)
    assert isinstance(net, Connected)
    torch.testing.assert_close(net(x), dec(enc(x)), atol=1e-6, rtol=0)
    assert [(s.src, s.dst) for s in net.skips] == [("a.1", "b.0"), ("a.0", "b.1")]
    # A is frozen: no gradients, eval mode even after train().
    net.train()
    assert not net.a.training and net.b.training and added(net)[0].training
    assert not any(p.requires_grad for p in net.a.parameters())
    a_state = {k: v.clone() for k, v in net.a.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (net(x) - x).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, net.a.state_dict()[k]) for k, v in a_state.items())
    # The user's models are untouched.
    assert all(p.requires_grad for p in enc.parameters())
    assert not any(m._forward_hooks for m in [*enc.modules(), *dec.modules()])


def test_same_input_for_both_models_and_return_a() -> None:
    a = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4))
    b = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 2))
    x = torch.randn(3, 6)
    net = connect(a, b, [("1", "1"), ("1", "2"), ("2", "3")], example=x, return_a=True)
    out_b, out_a = net(x)
    torch.testing.assert_close(out_b, b(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(out_a, a(x))
    out_b.sum().backward()
    assert all(p.grad is not None for p in net.skips.parameters())
    assert all(p.grad is not None for p in net.a.parameters())  # not frozen: A learns too


def test_pair_of_inputs_and_prefixed_paths() -> None:
    a = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
    b = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2))
    xa, xb = torch.randn(4, 5), torch.randn(4, 3)
    net = connect(a, b, {"a.0": "b.1"}, merge="concat", example=(xa, xb))
    torch.testing.assert_close(net(xa, xb), b(xb), atol=1e-6, rtol=0)
    # Composition: one more link with another merge.
    net2 = add_skip(net, "a.1", "b.2", merge="tanh_gate", example=(xa, xb))
    assert [s.merge for s in list_skips(net2)] == ["concat", "tanh_gate"] and len(net.skips) == 1
    torch.testing.assert_close(net2(xa, xb), b(xb), atol=1e-6, rtol=0)
    remove_skip(net2, "b.2")
    assert [s.dst for s in list_skips(net2)] == ["b.1"]


def test_skips_disabled_gives_b_alone() -> None:
    a, b = nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    x = torch.randn(2, 4)
    net = connect(a, b, {"": "0"}, example=x, zero_init=False)
    assert not torch.allclose(net(x), b(x))
    with sk.skips_disabled(net):
        torch.testing.assert_close(net(x), b(x), atol=0, rtol=0)


def test_connect_errors() -> None:
    a = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    b = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"link source \(in model_a\) '2' is not a submodule"):
        connect(a, b, {"2": "0"}, example=x)
    with pytest.raises(
        ValueError, match=r"link target \(in model_b\) 'relu' .*Did you mean '1' \(ReLU\)\?"
    ):
        connect(a, nn.Sequential(nn.Linear(4, 4), nn.ReLU()), {"0": "relu"}, example=x)
    with pytest.raises(ValueError, match="connect needs at least one link"):
        connect(a, b, {}, example=x)
    with pytest.raises(ValueError, match=r"connect needs example=<an input>"):
        connect(a, b, {"0": "0"})
    with pytest.raises(TypeError, match=r"model_b must be an nn\.Module"):
        connect(a, "b", {"0": "0"}, example=x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b_input must be 'input' or 'a_output'"):
        connect(a, b, {"0": "0"}, example=x, b_input="both")
    wide = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(sk.ShapeMismatchError, match=r"a.0 -> b.0: src and dst see different"):
        connect(wide, b, {"0": "0"}, example=(torch.randn(2, 4), torch.randn(3, 4)))
