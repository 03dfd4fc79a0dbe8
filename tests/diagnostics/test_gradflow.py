"""gradient_flow: per-layer and per-skip numbers checked against autograd by hand, the model
left untouched, the recorder with the Trainer and by hand, serialization and plots."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skipkit as sk
from skipkit.diagnostics import GradientFlow, GradientFlowRecorder, gradient_flow
from skipkit.diagnostics.gradflow import effective_rank
from skipkit.diagnostics.plot import plot_flow_in_time, plot_gradient_flow
from skipkit.train import Trainer


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm1d(c_out)
    )


def plain_net() -> nn.Sequential:
    """``(N, 1, 16) -> (N, 4)``: 4 convs with BN + ReLU, a pool and a linear head."""
    return nn.Sequential(
        conv_bn(1, 8),
        nn.ReLU(),
        conv_bn(8, 8),
        nn.ReLU(),
        conv_bn(8, 16, stride=2),
        nn.ReLU(),
        conv_bn(16, 16),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def residual_net() -> nn.Module:
    """The same layers with two Residual skips (identity, then a planned projection)."""
    net = nn.Sequential(
        conv_bn(1, 8),
        nn.ReLU(),
        sk.Residual(nn.Sequential(conv_bn(8, 8), nn.ReLU(), conv_bn(8, 8)), post="relu"),
        sk.Residual(nn.Sequential(conv_bn(8, 16, 2), nn.ReLU(), conv_bn(16, 16)), post="relu"),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    return sk.materialize(net, torch.randn(2, 1, 16))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 1, 16), torch.randint(0, 4, (8,))


def manual(
    net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[dict[str, float], dict[str, float], float]:
    """Reference: ‖∂L/∂W‖ and ‖∂L/∂a‖ per weight layer from a plain backward with retain_grad."""
    outs: dict[str, torch.Tensor] = {}
    weights = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv1d | nn.Linear)}

    def keep(name: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _a: object, out: torch.Tensor) -> None:
            out.retain_grad()
            outs[name] = out

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in weights.items()]
    x, y = batch
    loss = nn.CrossEntropyLoss()(net(x), y)
    loss.backward()
    for h in handles:
        h.remove()
    wg = {
        n: float(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).norm())
        for n, m in weights.items()
    }
    ag = {n: float(t.grad.norm()) for n, t in outs.items() if t.grad is not None}
    net.zero_grad(set_to_none=True)
    return wg, ag, float(loss.detach())


def test_layers_match_autograd(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    net = plain_net()
    flow = gradient_flow(net, batch, nn.CrossEntropyLoss())
    assert [layer.path for layer in flow.layers] == ["0.0", "2.0", "4.0", "6.0", "10"]
    assert [layer.depth for layer in flow.layers] == [1, 2, 3, 4, 5]
    assert flow.layers[2].out_shape == (8, 16, 8)
    wg, ag, loss = manual(net, batch)
    assert flow.loss == pytest.approx(loss, rel=1e-6)
    for layer in flow.layers:
        assert layer.weight_grad_norm == pytest.approx(wg[layer.path], rel=1e-5)
        assert layer.act_grad_norm == pytest.approx(ag[layer.path], rel=1e-5)
        assert layer.act_grad_rms == pytest.approx(layer.act_grad_norm / math.sqrt(layer.numel))
    # He et al. Fig. 7: the response after BN (train mode, γ=1) has std 1; the head has no BN
    assert [round(layer.response_std, 3) for layer in flow.layers[:4]] == [1.0] * 4
    assert flow.input_grad_norm is not None and flow.input_grad_norm > 0


def test_model_is_left_untouched(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    net = residual_net().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    gradient_flow(net, batch, nn.CrossEntropyLoss(), ranks=True)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN stats too
    assert not any(m.training for m in net.modules())
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert "branch" not in m.__dict__


def test_residual_skip_balance(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    net = residual_net()
    flow = gradient_flow(net, batch, nn.CrossEntropyLoss())
    # the projection conv inside the second skip's shortcut is part of the skip, not the depth
    assert [layer.depth for layer in flow.layers] == [1, 2, 3, 4, 5, 6]
    assert all("shortcut" not in layer.path for layer in flow.layers)
    s1, s2 = flow.skips
    assert (s1.path, s2.path) == ("2", "3")
    assert s1.depth == 2 and s2.depth == 4
    # identity shortcut: the skip carries x itself
    assert s1.shortcut_norm == pytest.approx(s1.in_norm)
    assert s2.shortcut_norm is not None and s2.shortcut_norm != pytest.approx(s2.in_norm)
    for s in (s1, s2):
        assert s.branch_norm and s.branch_grad_norm and s.shortcut_grad_norm and s.in_grad_norm
        assert s.shortcut_norm is not None
        assert s.forward_ratio == pytest.approx(s.branch_norm / s.shortcut_norm)
        assert s.grad_ratio == pytest.approx(s.branch_grad_norm / s.shortcut_grad_norm)
        # the two paths' gradients add up to the whole: triangle inequality both ways
        assert s.in_grad_norm <= s.branch_grad_norm + s.shortcut_grad_norm + 1e-6
        assert s.in_grad_norm >= abs(s.branch_grad_norm - s.shortcut_grad_norm) - 1e-6


def test_skip_branch_gradient_against_autograd() -> None:
    """Residual(Linear) without post: the shortcut's share of ∂L/∂x is exactly ∂L/∂y."""
    torch.manual_seed(1)
    block = sk.Residual(nn.Linear(6, 6))
    net = nn.Sequential(nn.Linear(5, 6), block, nn.Linear(6, 3))
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    flow = gradient_flow(net, (x, y), nn.CrossEntropyLoss())
    (s,) = flow.skips
    h = net[0](x).detach().requires_grad_(True)
    out = block(h)
    out.retain_grad()
    nn.CrossEntropyLoss()(net[2](out), y).backward()
    g_y = out.grad
    assert h.grad is not None and g_y is not None
    g_branch = (g_y @ block.body.weight).detach()  # ∂L/∂x through the Linear body
    assert s.out_grad_norm == pytest.approx(float(g_y.norm()), rel=1e-5)
    assert s.shortcut_grad_norm == pytest.approx(float(g_y.norm()), rel=1e-5)
    assert s.branch_grad_norm == pytest.approx(float(g_branch.norm()), rel=1e-5)
    assert s.in_grad_norm == pytest.approx(float(h.grad.norm()), rel=1e-5)


def test_cifar_blocks_and_disabled_skips() -> None:
    """skipkit.models' CIFAR blocks expose branch(x) and shortcut; with skips off the
    shortcut carries nothing."""
    models = pytest.importorskip("skipkit.models")
    net = models.create("resnet20", dims=1, in_channels=1, num_classes=10)
    batch = (torch.randn(8, 1, 40), torch.randint(0, 10, (8,)))
    flow = gradient_flow(net, batch, nn.CrossEntropyLoss(), name="ResNet-20")
    assert len(flow.layers) == 20 and len(flow.skips) == 9
    assert all(s.grad_ratio is not None and s.forward_ratio is not None for s in flow.skips)
    # option A (zero-pad) shortcuts of the stage changes have no parameters and no depth
    assert flow.skips[3].path == "layer2.0" and flow.skips[3].shortcut_norm is not None
    with sk.skips_disabled(net):
        off = gradient_flow(net, batch, nn.CrossEntropyLoss())
    assert all(not s.enabled and s.grad_ratio is None for s in off.skips)
    assert all(s.shortcut_grad_norm is None for s in off.skips)


def test_to_dict_round_trip(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    flow = gradient_flow(residual_net(), batch, nn.CrossEntropyLoss(), ranks=True, name="r")
    d = json.loads(json.dumps(flow.to_dict()))
    assert d["name"] == "r" and len(d["layers"]) == 6 and "grad_ratio" in d["skips"][0]
    back = GradientFlow.from_dict(d)
    assert back.column("act_grad_norm") == pytest.approx(flow.column("act_grad_norm"))
    assert back.skips[1].grad_ratio == pytest.approx(flow.skips[1].grad_ratio)
    assert all(1.0 <= (layer.effective_rank or 0) <= 8 for layer in flow.layers)


def test_effective_rank() -> None:
    assert effective_rank(torch.ones(6, 10)) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0, rel=1e-4)


def test_errors(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="batch must be"):
        gradient_flow(plain_net(), "x", nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="scalar"):
        gradient_flow(plain_net(), batch, nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="every"):
        GradientFlowRecorder(every=0)


def test_recorder_with_trainer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = TensorDataset(torch.randn(48, 1, 16), torch.randint(0, 4, (48,)))
    net = residual_net()
    rec = GradientFlowRecorder(every=2, name="res")
    Trainer(
        net, data, None, epochs=1, batch_size=8, quiet=True, device="cpu", callbacks=[rec]
    ).fit()
    assert [f.step for f in rec.history] == [0, 2, 4]
    for f in rec.history:
        assert len(f.layers) == 6 and len(f.skips) == 2
        assert all(math.isfinite(v) and v > 0 for v in f.column("act_grad_norm"))
        assert all(math.isfinite(v) and v > 0 for v in f.column("weight_grad_norm"))
        assert math.isfinite(f.loss)
    assert all(not m._forward_hooks and "branch" not in m.__dict__ for m in net.modules())
    doc = json.loads(json.dumps(rec.to_dict()))
    assert doc["every"] == 2 and len(doc["snapshots"]) == 3
    rec.plot(str(tmp_path / "time.png"))
    assert (tmp_path / "time.png").read_bytes()[:4] == b"\x89PNG"


def test_recorder_by_hand() -> None:
    net = plain_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = GradientFlowRecorder(every=3).attach(net)
    for step in range(7):
        x, y = torch.randn(8, 1, 16), torch.randint(0, 4, (8,))
        rec.arm(step)
        loss = nn.CrossEntropyLoss()(net(x), y)
        opt.zero_grad()
        loss.backward()
        flow = rec.record(step)
        assert (flow is not None) == (step % 3 == 0)
        if flow is not None:
            convs = [net.get_submodule(f"{i}.0") for i in (0, 2, 4, 6)]
            wg = [float(c.get_parameter("weight").grad.norm()) for c in convs]  # type: ignore[union-attr]
            assert flow.column("weight_grad_norm")[:4] == pytest.approx(wg, rel=1e-5)
        opt.step()
    rec.detach()
    assert [f.step for f in rec.history] == [0, 3, 6]
    with torch.no_grad():  # an unarmed forward records nothing
        net(torch.randn(2, 1, 16))
    assert len(rec.history) == 3


def test_plots(tmp_path, batch: tuple[torch.Tensor, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    flows = [
        gradient_flow(plain_net(), batch, nn.CrossEntropyLoss(), name="plain"),
        gradient_flow(residual_net(), batch, nn.CrossEntropyLoss(), name="residual"),
    ]
    fig = plot_gradient_flow(flows, tmp_path / "gf.png")
    assert len(fig.axes) == 3 and fig.axes[0].get_yscale() == "log"
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["plain", "residual"]
    flows[0].plot(str(tmp_path / "one.png"))
    for name in ("gf.png", "one.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        plot_flow_in_time([], tmp_path / "none.png")
