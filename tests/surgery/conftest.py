"""Small models shared by the surgery tests (plain, branchy, shared-module, conditional)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Branchy(nn.Module):
    """Non-Sequential control flow: a hard-coded residual, a data-dependent branch and a
    functional head. ``(N, 3, 16, 16) -> (N, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))  # (N, 8, 16, 16)
        a = F.relu(self.left(h)) + h
        b = self.norm(self.right(a if a.mean() > -1e9 else h))  # (N, 16, 8, 8)
        return self.head(F.relu(b).mean((2, 3)))


class Shared(nn.Module):
    """One block applied twice (weight sharing): it has no single output per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for _ in range(2):
            h = torch.tanh(self.block(h))
        return self.out(h)


class Conditional(nn.Module):
    """``extra`` runs only for inputs with a positive sum; ``twice`` twice for large ones."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.extra = nn.Linear(8, 8)
        self.twice = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if x.sum() > 0:
            h = self.extra(h)
        h = self.twice(h)
        if x.sum() > 100:
            h = self.twice(h)
        return self.out(h)


def plain_mlp(depth: int = 6, width: int = 16) -> nn.Sequential:
    """``(N, 8) -> (N, 3)``: Linear-Tanh layers, no skips."""
    layers: list[nn.Module] = [nn.Linear(8, width), nn.Tanh()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def plain_cnn() -> nn.Sequential:
    """``(N, 3, 16, 16) -> (N, 4)``: conv-BN-ReLU stages at 16, 8 and 4 pixels."""

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    return nn.Sequential(
        stage(3, 8, 1),
        stage(8, 8, 1),
        stage(8, 16, 2),
        stage(16, 16, 1),
        stage(16, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


@pytest.fixture
def mlp() -> nn.Sequential:
    return plain_mlp()


@pytest.fixture
def cnn() -> nn.Sequential:
    return plain_cnn()


@pytest.fixture
def branchy() -> Branchy:
    return Branchy()


@pytest.fixture
def shared() -> Shared:
    return Shared()


@pytest.fixture
def conditional() -> Conditional:
    return Conditional()
