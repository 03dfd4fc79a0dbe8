"""Added skips are ordinary modules: state_dict, deepcopy, pickle, torch.compile, DDP."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from skipkit.surgery import add_skip, connect, list_skips


def trained(net: nn.Module, x: torch.Tensor, steps: int = 2) -> nn.Module:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return net.eval()


@pytest.fixture
def grafted(cnn: nn.Sequential) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(2, 3, 16, 16)
    net = add_skip(cnn, "0", "4", example=x)
    net = add_skip(net, "1", "3", merge="concat", example=x)
    return trained(net, x), x


def test_state_dict_round_trip_into_a_fresh_grafted_model(
    grafted: tuple[nn.Module, torch.Tensor], cnn: nn.Sequential
) -> None:
    net, x = grafted
    keys = set(net.state_dict())
    assert {k for k in keys if k.startswith("model.")} == {f"model.{k}" for k in cnn.state_dict()}
    assert "skips.0.adapter.0.weight" in keys and "skips.1.merge.reduce.weight" in keys
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    fresh = add_skip(cnn, "0", "4", example=x)
    fresh = add_skip(fresh, "1", "3", merge="concat", example=x).eval()
    assert not torch.allclose(fresh(x), net(x))
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(x), net(x), atol=0, rtol=0)


def test_wrapped_model_loads_original_weights(cnn: nn.Sequential) -> None:
    """Pretrained weights of the original model still load into ``result.model``."""
    x = torch.randn(2, 3, 16, 16)
    net = add_skip(nn.Sequential(*[copy.deepcopy(m) for m in cnn]), "0", "4", example=x)
    net.model.load_state_dict(cnn.state_dict())
    torch.testing.assert_close(net.eval()(x), cnn.eval()(x), atol=1e-6, rtol=0)


def test_deepcopy_and_pickle_keep_working_independent_copies(
    grafted: tuple[nn.Module, torch.Tensor],
) -> None:
    net, x = grafted
    expected = net(x)
    clones: list[nn.Module] = [copy.deepcopy(net), pickle.loads(pickle.dumps(net))]
    for clone in clones:
        torch.testing.assert_close(clone(x), expected, atol=0, rtol=0)
        # The copy's hooks drive the copy's adapters, not the original's.
        with torch.no_grad():
            for p in clone.get_submodule("skips").parameters():
                p.add_(1.0)
        assert not torch.allclose(clone(x), expected)
        torch.testing.assert_close(net(x), expected, atol=0, rtol=0)
        assert [s.to_dict() for s in list_skips(clone)] == [s.to_dict() for s in list_skips(net)]


def test_torch_save_whole_module(grafted: tuple[nn.Module, torch.Tensor], tmp_path: Path) -> None:
    net, x = grafted
    torch.save(net, tmp_path / "net.pt")
    again = torch.load(tmp_path / "net.pt", weights_only=False)
    torch.testing.assert_close(again(x), net(x), atol=0, rtol=0)


def test_torch_compile_matches_eager_and_trains(mlp: nn.Sequential) -> None:
    x = torch.randn(4, 8)
    net = add_skip(mlp, "1", "9", example=x, zero_init=False)
    net = add_skip(net, "3", "11", merge="tanh_gate", example=x)
    expected = net(x)
    compiled = torch.compile(net, backend="aot_eager")
    inner = net.model
    assert isinstance(inner, nn.Sequential)
    out = compiled(x)
    torch.testing.assert_close(out, expected)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.skips.parameters())
    # The order checks still hold after compilation.
    with pytest.raises(RuntimeError, match=r"dst '9' ran before src '1'"):
        inner[2:](torch.randn(4, 16))


def test_ddp_single_process(mlp: nn.Sequential, tmp_path: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        x = torch.randn(4, 8)
        net = connect(mlp, mlp, {"3": "9"}, example=x)
        ddp = DistributedDataParallel(net)
        out = ddp(x)
        torch.testing.assert_close(out, mlp(x), atol=1e-6, rtol=0)
        out.square().mean().backward()
        grads = [p.grad for p in net.skips.parameters()]
        assert grads and all(g is not None for g in grads)
    finally:
        dist.destroy_process_group()
