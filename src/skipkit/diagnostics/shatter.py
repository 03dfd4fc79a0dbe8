"""Shattered gradients (Balduzzi et al. 2017): how alike are the input gradients of nearby inputs?

Along a straight line of inputs ``x_i = x0 + t_i · d`` (``d`` a random direction with the norm
of ``x0``, ``t_i`` evenly spaced in ``[-radius, radius]``) the gradient of a scalar output
``f(x) = u · model(x)`` (``u`` a fixed random unit vector) is taken at every point::

    g_i = ∂f/∂x (x_i)                      (C, *S), one per point of the line
    r(k) = mean_i corr(g_i, g_{i+k})       Pearson correlation over the entries of g

``r(0) = 1``. In a smooth net ``r(k)`` stays near 1 over the line (a linear model's gradient is
the same everywhere: ``r(k) = 1`` exactly); in a deep plain net it falls to 0 within a few
steps (the gradients look like white noise, "shattered"); with skips it falls far more slowly.

The gradients are taken in eval mode (batch norm with its running statistics) so that each
point's gradient depends on that point only; the model's training flag is restored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from skipkit.diagnostics.plot import plot_shattering

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Shattering", "shattering"]

OutputFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Shattering:
    """The gradient correlation of one model along lines of inputs.

    Attributes:
        name: a label for plots.
        offsets: the distance between two points of the line for each lag ``k = 0, 1, …``,
            as a fraction of ``‖x0‖``.
        correlation: ``r(k)``, the mean correlation of gradients ``k`` points apart (averaged
            over the lines: one per example given).
        lines: how many lines were averaged.
        points: points per line.
        radius: the line spans ``[-radius, radius] · ‖x0‖`` around each example.
    """

    name: str
    offsets: list[float]
    correlation: list[float]
    lines: int
    points: int
    radius: float
    meta: dict[str, Any] = field(default_factory=dict)

    def at(self, lag: int) -> float:
        """``r(lag)``."""
        return self.correlation[lag]

    def decay_lag(self, level: float = 0.5) -> int | None:
        """The first lag whose correlation is below ``level`` (``None``: never on this line)."""
        for k, r in enumerate(self.correlation):
            if r < level:
                return k
        return None

    def summary(self) -> dict[str, Any]:
        """``lag1`` (``r(1)``) and ``half_lag`` (:meth:`decay_lag` at 0.5) with its offset."""
        half = self.decay_lag(0.5)
        return {
            "name": self.name,
            "lag1": self.correlation[1] if len(self.correlation) > 1 else math.nan,
            "half_lag": half,
            "half_offset": None if half is None else self.offsets[half],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "offsets": list(self.offsets),
            "correlation": list(self.correlation),
            "lines": self.lines,
            "points": self.points,
            "radius": self.radius,
            "summary": self.summary(),
            "meta": dict(self.meta),
        }

    def plot(self, path: str | os.PathLike[str] | None = None, **kw: Any) -> Figure:
        """:func:`skipkit.diagnostics.plot.plot_shattering` of this result alone."""
        return plot_shattering([self], path, **kw)


def _random_projection(out: torch.Tensor, generator: torch.Generator) -> OutputFn:
    width = int(out[0].numel())
    u = torch.randn(width, generator=generator, dtype=torch.float64)
    u = (u / u.norm()).to(dtype=out.dtype, device=out.device)
    return lambda o: o.reshape(o.shape[0], -1) @ u


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise correlation of ``a`` and ``b`` ``(M, D)`` -> ``(M,)``; 1 where both rows are
    equal (also constant ones, whose correlation is otherwise undefined)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den.clamp_min(torch.finfo(a.dtype).tiny)
    same = (a == b).all(1)
    return torch.where(same, torch.ones_like(r), r)


def shattering(
    model: nn.Module,
    x: torch.Tensor,
    *,
    points: int = 128,
    radius: float = 0.5,
    max_lag: int | None = None,
    output: OutputFn | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    name: str = "",
) -> Shattering:
    """Balduzzi et al.'s gradient correlation along lines of nearby inputs.

    Args:
        model: maps ``(N, C, *S)`` to ``(N, …)``; used in eval mode, restored afterwards.
        x: the line centres ``(B, C, *S)``, one line per example (``B >= 1``), with at
            least two entries per example.
        points: points per line (Balduzzi et al. use 256).
        radius: the line is ``x0 + t · d``, ``t`` in ``[-radius, radius]``, ``‖d‖ = ‖x0‖``.
        max_lag: the largest lag reported (default ``points // 4``).
        output: maps the model's output ``(N, …)`` to the scalar per example ``(N,)`` whose
            gradient is taken; default: the projection on a random unit vector.
        seed: seeds the directions and the projection.
        batch_size: points per forward/backward pass.
        name: the label for plots.

    Returns:
        a :class:`Shattering` with ``r(k)`` for ``k = 0 … max_lag``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(
            f"x must be a batch of line centres (B, C, ...), got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if x[0].numel() < 2:
        raise ValueError(
            f"each input needs at least 2 entries to correlate gradients, got {tuple(x.shape)}"
        )
    if points < 3:
        raise ValueError(f"points must be >= 3, got {points}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    max_lag = points // 4 if max_lag is None else max_lag
    if not 1 <= max_lag < points:
        raise ValueError(f"max_lag must be in [1, points - 1] = [1, {points - 1}], got {max_lag}")
    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    t = torch.linspace(-radius, radius, points, dtype=x.dtype, device=x.device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(max_lag + 1, dtype=torch.float64)
    try:
        for x0 in x:
            d = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            d = (d * (x0.double().norm() / d.norm())).to(x0)
            line = x0.unsqueeze(0) + t.view(-1, *([1] * x0.dim())) * d.unsqueeze(0)  # (P, C, *S)
            grads = []
            for i in range(0, points, batch_size):
                xs = line[i : i + batch_size].clone().requires_grad_(True)
                out = model(xs)
                if output is None:
                    output = _random_projection(out, gen)
                (g,) = torch.autograd.grad(output(out).sum(), xs)
                grads.append(g.reshape(g.shape[0], -1).double())
            flat = torch.cat(grads)  # (P, D)
            sums[0] += 1.0
            for k in range(1, max_lag + 1):
                sums[k] += _pearson(flat[:-k], flat[k:]).mean().cpu()
    finally:
        model.train(was_training)
    step = 2 * radius / (points - 1)
    return Shattering(
        name=name,
        offsets=[k * step for k in range(max_lag + 1)],
        correlation=(sums / len(x)).tolist(),
        lines=len(x),
        points=points,
        radius=radius,
        meta={"seed": seed, "input_shape": list(x.shape[1:])},
    )
