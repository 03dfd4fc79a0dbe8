"""Retrofit skip connections into a deep plain MLP that does not train, and watch it train.

A 20-layer ReLU MLP without skips, at PyTorch's default init, loses its signal with depth:
SGD barely moves its loss. ``skipkit.add_skip`` adds identity skips over every two layers of
the *same* network (same weights, no rewrite of the model class), and it trains.

Two flavours of ``add_skip``:

- ``zero_init=True`` (the default) starts every adapter at zero, so the new network computes
  exactly the old function. That is what you want for a *trained* model (ControlNet's zero
  convolutions): nothing is lost at step 0. We check it below.
- ``zero_init=False`` makes the skips live from the start: plain identity shortcuts,
  ``y = block(x) + x``. A plain net *at init* has a vanished signal, and a skip that starts at
  zero has nothing to carry yet, so to rescue training from scratch we want live skips.

Run: ``python examples/surgery_retrofit_plain_net.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skipkit.surgery import add_skip, list_skips

DIM, WIDTH, DEPTH, CLASSES, SAMPLES = 16, 32, 20, 4, 512


def make_task() -> tuple[torch.Tensor, torch.Tensor]:
    """Labels from a small random teacher network: ``x (512, 16)``, ``y (512,)``."""
    teacher = nn.Sequential(nn.Linear(DIM, 64), nn.Tanh(), nn.Linear(64, CLASSES))
    x = torch.randn(SAMPLES, DIM)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return x, y


def plain_mlp() -> nn.Sequential:
    """``(N, 16) -> (N, 4)``: Linear-ReLU × 21, then a Linear head. ReLU ``i`` is at index
    ``2*i + 1``."""
    layers: list[nn.Module] = [nn.Linear(DIM, WIDTH), nn.ReLU()]
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, CLASSES))


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200) -> list[float]:
    """SGD with momentum on mini-batches of 64; returns the full-data loss every 50 steps."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    history = []
    for step in range(steps + 1):
        if step % 50 == 0:
            with torch.no_grad():
                history.append(F.cross_entropy(net(x), y).item())
        if step == steps:
            break
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def retrofit(model: nn.Module, example: torch.Tensor, *, zero_init: bool) -> nn.Module:
    """Identity skips from ReLU ``i`` to ReLU ``i + 2``, every two layers."""
    net = model
    for src in range(1, 2 * DEPTH, 4):
        net = add_skip(net, str(src), str(src + 4), example=example, zero_init=zero_init)
    return net


def main() -> None:
    torch.manual_seed(0)
    x, y = make_task()
    plain = plain_mlp()

    # zero_init=True: a new model with the same function, bit for bit.
    preserved = retrofit(plain, x[:2], zero_init=True)
    with torch.no_grad():
        assert torch.equal(preserved(x), plain(x))
    print(f"{len(list_skips(preserved))} skips added with zero_init=True: same outputs at step 0")

    # Live skips (zero_init=False) on the same initial weights; the input model is not changed.
    skipped = retrofit(plain, x[:2], zero_init=False)
    for info in list_skips(skipped)[:2]:
        print(f"  {info.tap:>3} -> {info.dst:<3} shortcut={info.shortcut} merge={info.merge}")

    loss_plain = train(plain, x, y)
    loss_skipped = train(skipped, x, y)
    print("training loss every 50 steps (chance is ln 4 = 1.386):")
    print("  plain 20-layer MLP:  ", "  ".join(f"{v:.3f}" for v in loss_plain))
    print("  with retrofit skips: ", "  ".join(f"{v:.3f}" for v in loss_skipped))
    print(f"before retrofit: {loss_plain[-1]:.3f}   after retrofit: {loss_skipped[-1]:.3f}")
    assert loss_skipped[-1] < 0.5 * loss_plain[-1], "the retrofitted net should train"


if __name__ == "__main__":
    main()
