"""Multi-stream residuals: HyperConnection (HC) and mHC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.streams import SINKHORN_ITERS, StreamMix, composite_gain, sinkhorn

D, S = 16, 4


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_expand_and_reduce_streams() -> None:
    x = torch.randn(2, 5, D)
    h = sk.expand_streams(x, S)
    assert h.shape == (2, 5, S, D)
    assert all(torch.equal(h[..., i, :], x) for i in range(S))
    torch.testing.assert_close(sk.reduce_streams(h), x)
    with pytest.raises(ValueError, match="streams=0"):
        sk.expand_streams(x, 0)


@pytest.mark.parametrize("constraint", [None, "sinkhorn"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_at_init_equals_the_single_stream_pre_norm_network(
    constraint: str | None, dynamic: bool
) -> None:
    bodies = [mlp() for _ in range(5)]
    residual = nn.Sequential(*[sk.Residual(b, norm="layer") for b in bodies])
    hyper = [
        sk.HyperConnection(
            b, S, layer_index=i, dynamic=dynamic, constraint=constraint, norm="layer"
        )
        for i, b in enumerate(bodies)
    ]
    for r, h in zip(residual, hyper, strict=True):  # the same norm weights too
        nn.init.normal_(r.norm.weight)
        h.norm.load_state_dict(r.norm.state_dict())
    x = torch.randn(3, 7, D)
    out = sk.expand_streams(x, S)
    for hc in hyper:
        out = hc(out)
    torch.testing.assert_close(sk.reduce_streams(out), residual(x), atol=1e-5, rtol=1e-5)


def test_sinkhorn_is_doubly_stochastic() -> None:
    # logits spread by a few units, as in training; far wider spreads converge more slowly
    m = sinkhorn(torch.randn(1000, S, S))
    torch.testing.assert_close(m.sum(-1), torch.ones(1000, S), atol=1e-3, rtol=0)
    torch.testing.assert_close(m.sum(-2), torch.ones(1000, S), atol=1e-3, rtol=0)
    assert bool((m >= 0).all())


def test_mhc_mixing_stays_doubly_stochastic_while_training() -> None:
    layers = nn.ModuleList(
        [sk.HyperConnection(mlp(), S, layer_index=i, constraint="sinkhorn") for i in range(3)]
    )
    opt = torch.optim.Adam(layers.parameters(), lr=0.2)
    # distinct streams (not copies), so the mixing matters and its logits get large updates
    x, target = torch.randn(8, 6, S, D), torch.randn(8, 6, D)
    for _ in range(25):
        h = x
        for hc in layers:
            mix = hc.shortcut
            assert isinstance(mix, StreamMix)
            for m in (mix.matrix(), mix.matrix(h)):  # static part, and per token
                torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-3, rtol=0)
                torch.testing.assert_close(m.sum(-2), torch.ones(m.shape[:-1]), atol=1e-3, rtol=0)
                assert bool((m >= 0).all())
            a_m, b = hc.coefficients(h)
            assert bool((a_m >= 0).all()) and bool((b >= 0).all())
            h = hc(h)
        loss = (sk.reduce_streams(h) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # training moved the mixing away from its init
    init = StreamMix(S, D, dynamic=False, constraint="sinkhorn").static
    assert float((layers[0].shortcut.static.detach() - init.detach()).abs().max()) > 1.0


def test_composite_gain_bounded_for_mhc_not_for_hc() -> None:
    hc = [sk.HyperConnection(mlp(), S, layer_index=i, dynamic=False) for i in range(8)]
    mhc = [
        sk.HyperConnection(mlp(), S, layer_index=i, dynamic=False, constraint="sinkhorn")
        for i in range(8)
    ]
    with torch.no_grad():
        for layer in hc + mhc:
            layer.shortcut.static.add_(torch.rand(S, S) * 0.5)
    assert composite_gain(mhc) == pytest.approx([1.0] * 8, abs=1e-3)
    gains = composite_gain(hc)
    assert gains[-1] > 10 * gains[0] > 10


def test_plain_twin_drops_the_carried_streams() -> None:
    hc = sk.HyperConnection(mlp(), S, layer_index=1, norm="layer")
    assert isinstance(hc, sk.SkipModule)
    h = torch.randn(2, 3, S, D)
    a_m, b = hc.coefficients(h)
    f = hc.layer(hc.norm(torch.einsum("...s,...sd->...d", a_m, h)))
    written = b.unsqueeze(-1) * f.unsqueeze(-2)
    torch.testing.assert_close(hc(h), hc.shortcut(h) + written)
    with sk.skips_disabled(hc):
        torch.testing.assert_close(hc(h), written)
    assert hc.skip_enabled
    info = hc.describe()
    assert (info.kind, info.shortcut, info.merge) == ("HyperConnection", "StreamMix", "add")


def test_body_arguments_and_tuple_outputs_pass_through() -> None:
    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(D, D)

        def forward(self, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, str]:
            return self.lin(x) * scale, "state"

    hc = sk.HyperConnection(WithState(), S, layer_index=0, dim=D)
    y, state = hc(torch.randn(2, S, D), 0.0)
    assert state == "state" and y.shape == (2, S, D)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"constraint": "softmax"}, ["constraint='softmax'", "sinkhorn"]),
        ({"streams": 0}, ["streams=0"]),
        ({"layer_index": -1}, ["layer_index=-1"]),
        ({"norm": "batch"}, ["norm='batch'"]),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], words: list[str]) -> None:
    args: dict[str, object] = {"layer_index": 0, **kwargs}
    with pytest.raises(ValueError) as info:
        sk.HyperConnection(mlp(), **args)  # type: ignore[arg-type]
    for w in words:
        assert w in str(info.value)


def test_width_must_be_known_and_streams_must_match() -> None:
    with pytest.raises(ValueError, match="pass dim=D"):
        sk.HyperConnection(nn.GELU(), S, layer_index=0)
    hc = sk.HyperConnection(mlp(), S, layer_index=0)
    with pytest.raises(ValueError, match="expand_streams"):
        hc(torch.randn(2, 5, D))


def _perturbed(hc: sk.HyperConnection) -> sk.HyperConnection:
    """``hc`` in float64 with every parameter moved off its init (so no coefficient is 0/1)."""
    hc.double()
    with torch.no_grad():
        for p in hc.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return hc


def _output_and_grads(
    forward: Callable[[torch.Tensor], torch.Tensor], hc: nn.Module, x: torch.Tensor
) -> list[torch.Tensor]:
    hc.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = forward(x)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weights).sum().backward()
    assert x.grad is not None
    # the plain twin leaves the shortcut's parameters without a gradient
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in hc.parameters()]
    return [y.detach(), x.grad, *grads]


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("constraint", [None, "sinkhorn"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_fused_forward_equals_the_protocol_parts(
    dynamic: bool, constraint: str | None, skip: bool
) -> None:
    # HyperConnection.forward fuses shortcut and branch; the protocol's generic path
    # merge(shortcut(H), branch(H)) is the reference, in values and in every gradient
    hc = _perturbed(
        sk.HyperConnection(
            mlp(), S, layer_index=2, dynamic=dynamic, constraint=constraint, norm="layer"
        )
    )
    hc.skip_enabled = skip
    x = torch.randn(3, 5, S, D, dtype=torch.float64)
    fused = _output_and_grads(hc, hc, x)
    generic = _output_and_grads(lambda h: sk.SkipModule.forward(hc, h), hc, x)
    assert len(fused) == len(generic) == 2 + len(list(hc.parameters()))
    for a, b in zip(fused, generic, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dynamic", [True, False])
def test_fused_gradients_through_reduce_streams(dynamic: bool) -> None:
    # the mean over the streams hands the layer an expanded gradient (stride 0)
    hc = _perturbed(sk.HyperConnection(mlp(), S, layer_index=0, dynamic=dynamic))
    x = torch.randn(2, 3, S, D, dtype=torch.float64)

    def fused(h: torch.Tensor) -> torch.Tensor:
        return sk.reduce_streams(hc(h))

    def generic(h: torch.Tensor) -> torch.Tensor:
        return sk.reduce_streams(sk.SkipModule.forward(hc, h))

    for a, b in zip(
        _output_and_grads(fused, hc, x), _output_and_grads(generic, hc, x), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_fused_forward_reads_expanded_streams() -> None:
    # the first layer sees expand_streams' view (stride 0 over the streams)
    hc = _perturbed(sk.HyperConnection(mlp(), S, layer_index=0, constraint="sinkhorn"))
    x = torch.randn(2, 3, D, dtype=torch.float64)
    expanded = sk.expand_streams(x, S)
    torch.testing.assert_close(hc(expanded), hc(expanded.contiguous()), atol=1e-12, rtol=0)


def test_a_replaced_merge_is_used() -> None:
    hc = sk.HyperConnection(mlp(), S, layer_index=1)
    hc.merge = sk.merges.Mul()
    h = torch.randn(2, S, D)
    torch.testing.assert_close(hc(h), hc.shortcut(h) * hc.branch(h))


def _unrolled_sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    m = (logits - logits.amax(dim=(-2, -1), keepdim=True)).exp()
    for _ in range(iters):
        m = m / m.sum(dim=-1, keepdim=True)
        m = m / m.sum(dim=-2, keepdim=True)
    return m


@pytest.mark.parametrize("streams", [2, 4])
def test_sinkhorn_gradient_is_the_unrolled_rounds_gradient(streams: int) -> None:
    logits = torch.randn(2, 3, streams, streams, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, streams, streams, dtype=torch.float64)
    ours = torch.autograd.grad((sinkhorn(logits) * weights).sum(), logits)[0]
    ref_m = _unrolled_sinkhorn(logits, SINKHORN_ITERS)
    ref = torch.autograd.grad((ref_m * weights).sum(), logits)[0]
    torch.testing.assert_close(sinkhorn(logits), ref_m, atol=1e-14, rtol=0)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda z: sinkhorn(z, iters=3), (logits[0, :1],))


@pytest.mark.parametrize("constraint", [None, "sinkhorn"])
def test_trains_under_autocast(constraint: str | None) -> None:
    # half-precision products inside the custom backward passes: gradients keep the
    # parameters' dtype and stay finite
    hc = sk.HyperConnection(mlp(), S, layer_index=0, constraint=constraint, norm="layer")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hc(torch.randn(2, 3, S, D))
    out.float().square().mean().backward()
    for p in hc.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert bool(torch.isfinite(p.grad).all())


@pytest.mark.parametrize("constraint", [None, "sinkhorn"])
def test_fused_gradients_twice_and_in_part(constraint: str | None) -> None:
    # the fused backward hands one gradient of H from the read to the projection (_GradSlot):
    # a retained graph run twice, a gradient of the input alone or of the parameters alone,
    # and frozen parameters all give the generic path's numbers
    hc = _perturbed(sk.HyperConnection(mlp(), S, layer_index=3, constraint=constraint))
    x = torch.randn(2, 3, S, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, S, D, dtype=torch.float64)
    params = list(hc.parameters())

    def grads(forward: Callable[[torch.Tensor], torch.Tensor], wrt: list[torch.Tensor]) -> Any:
        return torch.autograd.grad((forward(x) * w).sum(), wrt)

    def generic(h: torch.Tensor) -> torch.Tensor:
        return sk.SkipModule.forward(hc, h)

    for wrt in ([x], params, [x, *params]):
        for a, b in zip(grads(hc, wrt), grads(generic, wrt), strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    loss = (hc(x) * w).sum()
    first = torch.autograd.grad(loss, [x, *params], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *params])
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    hc.requires_grad_(False)
    torch.testing.assert_close(grads(hc, [x])[0], grads(generic, [x])[0], atol=1e-12, rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("constraint", [None, "sinkhorn"])
def test_cuda_fused_equals_the_protocol_parts(constraint: str | None) -> None:
    # the fused path's batched products and the Sinkhorn layout on a GPU: values and every
    # gradient as the generic path's (float32, so to rounding), and bf16 autocast trains
    hc = _perturbed(
        sk.HyperConnection(mlp(), S, layer_index=1, constraint=constraint, norm="layer")
    ).to(device="cuda", dtype=torch.float32)
    x = torch.randn(4, 7, S, D, device="cuda")
    fused = _output_and_grads(hc, hc, x)
    generic = _output_and_grads(lambda h: sk.SkipModule.forward(hc, h), hc, x)
    for a, b in zip(fused, generic, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = hc(x)
    out.float().square().mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in hc.parameters())
