"""loss_landscape / interpolate: Li et al.'s filter normalization, bit-exact restoration,
values against a hand-moved copy, resume after an interruption, two processes under
torch.distributed, files and plots."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import skipkit as sk
from skipkit.diagnostics.landscape import (
    Landscape,
    evaluate,
    filter_normalize,
    interpolate,
    loss_landscape,
    random_direction,
)
from skipkit.diagnostics.plot import plot_landscape, plot_landscapes

LOSS = nn.CrossEntropyLoss()


def tiny() -> nn.Module:
    """``(N, 2, 12) -> (N, 3)`` with BatchNorm (running stats that must survive) and a skip."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        sk.Residual(nn.Sequential(nn.Conv1d(6, 6, 3, padding=1), nn.BatchNorm1d(6)), post="relu"),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    sk.materialize(net, torch.randn(2, 2, 12))
    net.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for _ in range(3):
            net(torch.randn(16, 2, 12) * 2 + 1)
    return net


def data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 2, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_state(net: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    now = net.state_dict()
    assert now.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(now[k], v), k


def test_filter_normalization() -> None:
    net = tiny()
    d = random_direction(net, seed=5)
    params = dict(net.named_parameters())
    assert d.keys() == params.keys()  # parameters only: BN running stats never move
    for name, t in d.items():
        w = params[name].detach()
        if w.dim() <= 1:
            assert not t.any(), name  # biases and BN weights: zero
        else:
            got = t.flatten(1).norm(dim=1)
            assert torch.allclose(got, w.flatten(1).norm(dim=1), rtol=1e-5), name
    with_bn = random_direction(net, seed=5, include_bn=True)
    assert torch.allclose(with_bn["1.weight"].norm(), params["1.weight"].norm())
    assert torch.equal(random_direction(net, seed=5)["0.weight"], d["0.weight"])
    assert not torch.equal(random_direction(net, seed=6)["0.weight"], d["0.weight"])
    with pytest.raises(ValueError, match="shape"):
        filter_normalize({"0.weight": torch.ones(2)}, params)


def test_grid_values_and_bit_exact_restore() -> None:
    net = tiny().train()  # evaluation must switch to eval mode and back
    saved = snapshot(net)
    x, y = data()
    land = loss_landscape(net, (x, y), LOSS, steps=5, seed=1, batch_size=16)
    assert_same_state(net, saved)
    assert net.training and all(m.training for m in net.modules())
    assert land.loss.shape == (5, 5) and land.accuracy.shape == (5, 5)
    assert land.coords[0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    net.eval()
    ref_loss, ref_acc = evaluate(net, [(x[i : i + 16], y[i : i + 16]) for i in (0, 16, 32)], LOSS)
    assert land.loss[2, 2] == ref_loss and land.accuracy[2, 2] == ref_acc  # the origin, exactly
    # a corner against a hand-moved copy of the model
    gen = torch.Generator().manual_seed(1)
    d1, d2 = (random_direction(net, generator=gen) for _ in range(2))
    moved = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if p.dim() > 1:
                p.add_(d1[name], alpha=-1.0).add_(d2[name], alpha=0.5)
    want, _ = evaluate(moved, [(x, y)], LOSS)
    assert land.loss[0, 3] == pytest.approx(want, rel=1e-5)
    assert land.meta["moved_tensors"] == 3  # the two convs and the linear weight
    assert land.summary()["origin_loss"] == ref_loss


def test_one_dim_given_directions_and_loader() -> None:
    net = tiny()
    x, y = data()
    d = random_direction(net, seed=2)
    a = loss_landscape(net, (x, y), LOSS, directions=[d], steps=7, span=(-0.3, 0.3))
    assert a.dims == 1 and a.kind == "directions" and a.loss.shape == (7,)
    loader = DataLoader(TensorDataset(x, y), batch_size=512)
    b = loss_landscape(net, loader, LOSS, directions=[d], steps=7, span=(-0.3, 0.3))
    c = loss_landscape(net, TensorDataset(x, y), LOSS, directions=[d], steps=7, span=(-0.3, 0.3))
    assert np.array_equal(a.loss, b.loss) and np.array_equal(a.loss, c.loss)
    assert b.meta["examples"] == 40


def test_interrupt_and_resume(tmp_path: Path) -> None:
    net = tiny()
    saved = snapshot(net)
    x, y = data()
    full = loss_landscape(net, (x, y), LOSS, steps=4, seed=3)
    ckpt = tmp_path / "scan.npz"
    seen: list[int] = []

    def stop_after_7(i: int, loss: float, acc: float) -> None:
        seen.append(i)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loss_landscape(net, (x, y), LOSS, steps=4, seed=3, checkpoint=ckpt, on_point=stop_after_7)
    assert_same_state(net, saved)  # restored even though the scan was cut short
    with np.load(ckpt) as z:
        assert int(z["done"].sum()) == 7
    rest: list[int] = []
    again = loss_landscape(
        net,
        (x, y),
        LOSS,
        steps=4,
        seed=3,
        checkpoint=ckpt,
        on_point=lambda i, lo, ac: rest.append(i),
    )
    assert sorted(seen + rest) == list(range(16)) and len(rest) == 9
    assert np.array_equal(again.loss, full.loss) and np.array_equal(again.accuracy, full.accuracy)
    assert_same_state(net, saved)
    # a finished checkpoint answers at once; another run's checkpoint is refused
    done: list[int] = []
    loss_landscape(
        net, (x, y), LOSS, steps=4, seed=3, checkpoint=ckpt, on_point=lambda *a: done.append(1)
    )
    assert not done
    with pytest.raises(ValueError, match="another landscape"):
        loss_landscape(net, (x, y), LOSS, steps=4, seed=4, checkpoint=ckpt)


def test_interpolate_moves_batchnorm_statistics() -> None:
    a, b = tiny(), tiny()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * torch.randn_like(p))
        b.get_buffer("1.running_mean").add_(1.0)
    net = tiny()
    saved = snapshot(net)
    x, y = data()
    line = interpolate(net, a.state_dict(), b.state_dict(), (x, y), LOSS, steps=5, span=(0, 1))
    assert_same_state(net, saved)
    assert line.kind == "interpolation" and line.dims == 1
    assert line.meta["moved_tensors"] == len(
        [v for v in net.state_dict().values() if v.is_floating_point()]
    )
    la, _ = evaluate(a.eval(), [(x, y)], LOSS)
    lb, _ = evaluate(b.eval(), [(x, y)], LOSS)
    assert line.loss[0] == pytest.approx(la, rel=1e-6)
    assert line.loss[-1] == pytest.approx(lb, rel=1e-5)
    # the running statistics alone change the loss: they are part of the path
    only_stats = a.state_dict()
    only_stats = {k: v.clone() for k, v in only_stats.items()}
    only_stats["1.running_mean"] += 1.0
    bn = interpolate(net, a.state_dict(), only_stats, (x, y), LOSS, steps=3, span=(0, 1))
    assert bn.loss[0] != bn.loss[-1]
    # extrapolated far past B a running variance would turn negative: it is clamped at zero
    big_var = {k: v.clone() for k, v in a.state_dict().items()}
    big_var["1.running_var"] *= 10.0
    far = interpolate(net, a.state_dict(), big_var, (x, y), LOSS, steps=3, span=(-1, 2))
    assert np.isfinite(far.loss).all()
    with pytest.raises(ValueError, match="lacks"):
        interpolate(net, {}, b.state_dict(), (x, y), LOSS)


def test_save_load_and_json(tmp_path: Path) -> None:
    land = loss_landscape(tiny(), data(), LOSS, steps=3, seed=0)
    land.loss[0, 0] = np.inf  # non-finite values survive files and become null in JSON
    path = land.save(tmp_path / "land.npz")
    back = Landscape.load(path)
    assert np.array_equal(back.loss, land.loss) and back.meta == land.meta
    assert [c.tolist() for c in back.coords] == [c.tolist() for c in land.coords]
    doc = json.loads(json.dumps(land.to_dict()))
    assert doc["loss"][0][0] is None and doc["dims"] == 2 and "nonconvex" in doc["summary"]
    with pytest.raises(ValueError, match="landscape"):
        np.savez(tmp_path / "other.npz", a=np.zeros(2))
        Landscape.load(tmp_path / "other.npz")


def test_argument_errors() -> None:
    net, d = tiny(), data()
    with pytest.raises(ValueError, match="dims"):
        loss_landscape(net, d, LOSS, dims=3)
    with pytest.raises(ValueError, match="span"):
        loss_landscape(net, d, LOSS, span=(1.0, -1.0))
    with pytest.raises(ValueError, match="not in the model"):
        loss_landscape(net, d, LOSS, directions=[{"nope": torch.zeros(1)}])
    with pytest.raises(ValueError, match="data must be"):
        loss_landscape(net, 3, LOSS)


def test_plots(tmp_path: Path) -> None:
    net, d = tiny(), data()
    two = loss_landscape(net, d, LOSS, steps=5)
    one = loss_landscape(net, d, LOSS, dims=1, steps=5)
    fig = plot_landscape(two, tmp_path / "two.png")
    assert len([a for a in fig.axes if a.name == "3d"]) == 1
    one.plot(tmp_path / "one.png")
    plot_landscapes([two, two], tmp_path / "both.png", labels=["a", "b"])
    plot_landscapes([one, one], tmp_path / "curves.png", labels=["a", "b"])
    for name in ("two.png", "one.png", "both.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


WORKER = """
import sys, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from test_landscape import tiny, data, LOSS
from skipkit.diagnostics.landscape import loss_landscape
import torch.distributed as dist
land = loss_landscape(tiny(), data(), LOSS, steps=5, seed=7, batch_size=16,
                      checkpoint={ckpt!r})
if dist.get_rank() == 0:
    land.save({out!r})
    print("processes", land.meta["processes"])
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): the gathered grid equals the single-process one."""
    script = tmp_path / "worker.py"
    out, ckpt = tmp_path / "dist.npz", tmp_path / "ckpt.npz"
    here = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(WORKER.format(here=here, ckpt=str(ckpt), out=str(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script)], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes 2" in proc.stdout
    single = loss_landscape(tiny(), data(), LOSS, steps=5, seed=7, batch_size=16)
    both = Landscape.load(out)
    assert np.array_equal(both.loss, single.loss)
    assert np.array_equal(both.accuracy, single.accuracy)
    with np.load(ckpt) as z:  # rank 0 merged the per-rank checkpoints
        assert z["done"].all()
    assert not list(tmp_path.glob("ckpt.npz.rank*"))
