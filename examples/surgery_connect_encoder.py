"""Skip connections between two models through intermediate layers (seed 001).

A frozen encoder ``A`` squeezes a 32×32 image into a 4×4 code; a decoder ``B`` rebuilds the
image from the code. Through the code alone fine detail is lost. ``skipkit.connect`` feeds
A's intermediate feature maps into B's matching stages, U-Net style, without editing either
class:

::

    A:  image ── stem ──── down1 ──── down2 ──── code
                (8@32²)   (16@16²)   (32@8²)    (32@4²)
                  │          │          │          │
                  │          │       1×1 conv      │
                  │          │          │ add      │
    B:  out ───── up3 ←──── up2 ←────── up1 ←──────┘
                (6@32²)   (12@16²)   (24@8²)
                  ↑ concat   ↑ add
                  │          └── 1×1 conv ── down1
                  └── reduced back to 6 channels ── stem

The shapes differ at every link (32→24, 16→12 and 6+8→6 channels); ``connect`` plans the
projections from one example batch. The adapters start at zero, so at step 0 the connected
model computes exactly what the decoder alone computes; training the decoder and adapters
(the encoder stays frozen) then beats the same decoder without the links.

Run: ``python examples/surgery_connect_encoder.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from skipkit.surgery import add_skip, connect, list_skips


def images(n: int, *, seed: int) -> torch.Tensor:
    """``(n, 1, 32, 32)`` synthetic images: a few bright rectangles with sharp edges on noise."""
    gen = torch.Generator().manual_seed(seed)
    out = 0.1 * torch.randn(n, 1, 32, 32, generator=gen)
    for i in range(n):
        for _ in range(3):
            r, c = torch.randint(0, 28, (2,), generator=gen).tolist()
            h, w = torch.randint(2, 9, (2,), generator=gen).tolist()
            out[i, 0, r : r + h, c : c + w] += 1.0
    return out


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


class Encoder(nn.Module):
    """``(N, 1, 32, 32) -> (N, 32, 4, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv(1, 8)  # (N, 8, 32, 32)
        self.down1 = conv(8, 16, 2)  # (N, 16, 16, 16)
        self.down2 = conv(16, 32, 2)  # (N, 32, 8, 8)
        self.code = nn.Conv2d(32, 32, 3, stride=2, padding=1)  # (N, 32, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.down2(self.down1(self.stem(x))))


class Decoder(nn.Module):
    """``(N, 32, 4, 4) -> (N, 1, 32, 32)``."""

    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2), conv(32, 24))  # (N, 24, 8, 8)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2), conv(24, 12))  # (N, 12, 16, 16)
        self.up3 = nn.Sequential(nn.Upsample(scale_factor=2), conv(12, 6))  # (N, 6, 32, 32)
        self.out = nn.Conv2d(6, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.up3(self.up2(self.up1(z))))


def fit(model: nn.Module, data: torch.Tensor, steps: int = 80) -> float:
    """Adam on reconstruction; returns the final mean squared error on ``data``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (32,), generator=gen)]
        loss = F.mse_loss(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.mse_loss(model(data), data).item()


def main() -> None:
    torch.manual_seed(0)
    data = images(256, seed=0)
    encoder, decoder = Encoder().eval(), Decoder()

    # Baseline: the decoder on the frozen encoder's code only.
    plain = nn.Sequential(copy.deepcopy(encoder).requires_grad_(False), copy.deepcopy(decoder))

    net = connect(
        encoder,
        decoder,
        {"down2": "up1", "down1": "up2"},
        example=data[:2],
        b_input="a_output",  # B decodes A's output (A's input otherwise)
        freeze_a=True,
    )
    # One more link with another merge: connect's result composes with add_skip.
    net = add_skip(net, "a.stem", "b.up3", merge="concat", example=data[:2])
    for info in list_skips(net):
        print(
            f"  {info.tap:>8} -> {info.dst:<6} {info.shortcut:<20} {info.merge:<7} "
            f"{info.parameters:>5} parameters"
        )

    with torch.no_grad():
        assert torch.allclose(net(data[:8]), plain(data[:8]), atol=1e-6), "zero init"
    print("step 0: the connected model computes exactly the decoder's output")

    mse_plain = fit(plain, data)
    mse_connected = fit(net, data)
    assert not any(p.requires_grad for p in net.a.parameters()) and not net.a.training
    print(f"reconstruction MSE, decoder alone:           {mse_plain:.4f}")
    print(f"reconstruction MSE, with the encoder linked: {mse_connected:.4f}")
    assert mse_connected < 0.8 * mse_plain, "the links should help the decoder"


if __name__ == "__main__":
    main()
