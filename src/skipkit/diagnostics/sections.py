"""Report sections for ``skipkit demo``: gradient flow and loss landscapes, plain vs residual.

Each function returns a :class:`ReportSection` (a title, trusted HTML, captioned PNGs) that
:meth:`skipkit.experiments.report.Report.add_section` takes as it is::

    for s in report_sections(out_dir, depths=(20, 56)):
        report.add_section(s.title, s.html, s.images)

The networks are the demo's: :func:`skipkit.experiments.degradation.build_model` seeded with
``seed`` (so the initial weights are the demo's), and, when the demo has trained them, the
weights in ``out_dir/runs/<plain|residual>-<depth>/model.safetensors``.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipkit.diagnostics.gradflow import GradientFlow, gradient_flow
from skipkit.diagnostics.landscape import Landscape, loss_landscape

__all__ = ["ReportSection", "gradient_flow_section", "landscape_section", "report_sections"]

log = logging.getLogger(__name__)

# the report's colours: plain nets warm, residual nets cool, darker = deeper
_PLAIN = ("#f4a582", "#d6604d", "#b2182b", "#67001f")
_RESIDUAL = ("#92c5de", "#4393c3", "#2166ac", "#053061")


@dataclass
class ReportSection:
    """A section of the HTML report: ``add_section(s.title, s.html, s.images)``."""

    title: str
    html: str
    images: list[tuple[str, bytes]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # the numbers behind it, JSON-ready


def report_sections(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    depths: Sequence[int] = (20, 56),
    landscape_depth: int = 20,
    dataset: str = "mnist1d",
    seed: int = 0,
    quick: bool = False,
    progress: bool = False,
) -> list[ReportSection]:
    """The gradient-flow and the loss-landscape sections, with the demo's networks.

    Args:
        out_dir: the demo's output folder; trained weights are read from
            ``out_dir/runs/<plain|residual>-<depth>/model.safetensors`` when present.
        depths: the depths of the gradient-flow comparison.
        landscape_depth: the depth whose two twins get a landscape.
        dataset: a name of :data:`skipkit.data.DATASETS`.
        seed: the demo's seed (same initial weights).
        quick: a seconds-long version (tiny grid, few examples) for smoke runs.
        progress: show tqdm bars for the landscape grids.
    """
    runs = Path(out_dir) / "runs" if out_dir is not None else None
    return [
        gradient_flow_section(depths=depths, dataset=dataset, seed=seed, runs=runs),
        landscape_section(
            depth=landscape_depth,
            dataset=dataset,
            seed=seed,
            runs=runs,
            steps=5 if quick else 11,
            examples=128 if quick else 500,
            train_epochs=1 if quick else 8,
            progress=progress,
        ),
    ]


# ----------------------------------------------------------------------------- helpers


def _build(depth: int, skip: bool, dataset: str, seed: int) -> nn.Module:
    from skipkit.experiments.degradation import build_model
    from skipkit.train import seed_everything

    seed_everything(seed)  # the demo's initial weights
    return build_model(depth, skip=skip, dataset=dataset)


def _name(depth: int, skip: bool) -> str:
    return f"{'residual' if skip else 'plain'}-{depth}"


def _label(depth: int, skip: bool) -> str:
    return f"{'ResNet' if skip else 'plain'}-{depth}"


def _trained(runs: Path | None, depth: int, skip: bool) -> Path | None:
    if runs is None:
        return None
    path = runs / _name(depth, skip) / "model.safetensors"
    return path if path.is_file() else None


def _colors(depths: Sequence[int]) -> dict[tuple[int, bool], str]:
    order = sorted(set(depths))
    picks = [1 + round(2 * i / max(len(order) - 1, 1)) for i in range(len(order))]
    out = {}
    for d, k in zip(order, picks, strict=True):
        out[(d, False)], out[(d, True)] = _PLAIN[k], _RESIDUAL[k]
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _batch(dataset: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from skipkit.data import get_dataset

    train, _ = get_dataset(dataset)
    size = len(train)  # type: ignore[arg-type]
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    xs, ys = zip(*(train[int(i)] for i in idx), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from skipkit.experiments.report import html_table

    return html_table(headers, rows)


# ------------------------------------------------------------------------- gradient flow


def _trunk_decades(flow: GradientFlow) -> float:
    """``log10`` of ‖∂L/∂a‖ at the first block layer over the last conv (stem and head out)."""
    g = [v for v in flow.column("act_grad_norm")[1:-1] if math.isfinite(v) and v > 0]
    return math.log10(g[0] / g[-1]) if len(g) > 1 else math.nan


def gradient_flow_section(
    *,
    depths: Sequence[int] = (20, 56),
    dataset: str = "mnist1d",
    seed: int = 0,
    runs: Path | None = None,
    examples: int = 128,
) -> ReportSection:
    """Gradient norm against depth for the plain and residual twins at each depth, at
    initialization, and He et al.'s Fig. 7 (response std per layer) for the trained nets when
    their weights are in ``runs``."""
    from skipkit.diagnostics.plot import plot_gradient_flow
    from skipkit.models import load_weights

    batch = _batch(dataset, examples, seed)
    colors = _colors(depths)
    keys = [(d, s) for d in sorted(depths) for s in (False, True)]
    init: list[GradientFlow] = []
    trained: list[GradientFlow] = []
    for d, s in keys:
        model = _build(d, s, dataset, seed)
        init.append(gradient_flow(model, batch, nn.CrossEntropyLoss(), name=_label(d, s)))
        weights = _trained(runs, d, s)
        if weights is not None:
            load_weights(model, weights)
            trained.append(gradient_flow(model, batch, nn.CrossEntropyLoss(), name=_label(d, s)))
    images = [
        (
            "At initialization: gradient norm of each layer's output and of its weights against "
            "depth (log scale; dashed = plain, solid = residual).",
            _png(
                plot_gradient_flow(
                    init,
                    keys=("act_grad_norm", "weight_grad_norm"),
                    colors=[colors[k] for k in keys],
                )
            ),
        )
    ]
    if trained:
        have = [k for k in keys if _trained(runs, *k) is not None]
        images.append(
            (
                "After training: gradient norms, and the std of each layer's response after BN "
                "(before the addition) — He et al. 2015, Fig. 7.",
                _png(plot_gradient_flow(trained, colors=[colors[k] for k in have])),
            )
        )
    rows = []
    for f in init:
        ratios = [s.grad_ratio for s in f.skips if s.grad_ratio is not None]
        rows.append(
            [
                f.name,
                len(f.layers),
                f"{_trunk_decades(f):.2f}",
                f"{statistics.median(ratios):.2f}" if ratios else "—",
            ]
        )
    table = _table(
        ["network (at init)", "layers", "‖∂L/∂a‖ first/last block layer (decades)", "grad ratio"],
        rows,
    )
    by = {f.name: _trunk_decades(f) for f in init}
    deep = max(depths)
    plain, res = by.get(_label(deep, False), math.nan), by.get(_label(deep, True), math.nan)
    text = (
        "<p>One forward and backward pass over a batch of training data, per network, at the "
        "demo's initial weights. Plotted is the norm of the loss gradient at each layer's "
        "output (‖∂L/∂a‖) and at its weights. "
        f"In the plain {deep}-layer net the gradient changes by "
        f"<b>{plain:.1f} decades</b> between the first and the last block layer "
        "(with batch norm, deep plain nets' gradients grow exponentially towards the input, "
        f"Yang et al. 2019); in its residual twin by <b>{res:.1f}</b>: the identity "
        "shortcuts carry the gradient past every block (Balduzzi et al. 2017). "
        "The grad ratio is the median over skips of ‖∂L/∂x through the branch‖ / ‖∂L/∂x "
        "through the shortcut‖.</p>"
    )
    data = {"init": [f.to_dict() for f in init], "trained": [f.to_dict() for f in trained]}
    return ReportSection("Gradient flow", text + table, images, data)


# ------------------------------------------------------------------------------ landscape


def landscape_section(
    *,
    depth: int = 20,
    dataset: str = "mnist1d",
    seed: int = 0,
    runs: Path | None = None,
    steps: int = 11,
    examples: int = 500,
    train_epochs: int = 8,
    progress: bool = False,
) -> ReportSection:
    """Li et al.'s 2-D loss landscape of the residual net of ``depth`` and its plain twin,
    trained (weights from ``runs``, or ``train_epochs`` of the default recipe here)."""
    from skipkit.diagnostics.plot import plot_landscapes
    from skipkit.models import load_weights
    from skipkit.train import TrainConfig, Trainer

    x, y = _batch(dataset, examples, seed + 1)
    lands: list[Landscape] = []
    sources = []
    for skip in (True, False):
        model = _build(depth, skip, dataset, seed)
        weights = _trained(runs, depth, skip)
        if weights is not None:
            load_weights(model, weights)
            sources.append(f"the demo's trained {_label(depth, skip)}")
        else:
            from skipkit.data import get_dataset

            train, _ = get_dataset(dataset)
            cfg = TrainConfig(epochs=train_epochs, seed=seed, quiet=True, device="cpu")
            Trainer(model, train, None, cfg).fit()
            sources.append(f"{_label(depth, skip)} trained for {train_epochs} epochs")
        lands.append(
            loss_landscape(
                model,
                (x, y),
                nn.CrossEntropyLoss(),
                steps=steps,
                seed=seed,
                progress=progress,
                name=_label(depth, skip),
            )
        )
    fig = plot_landscapes(lands, labels=[land.name for land in lands])
    rows = []
    for land in lands:
        s = land.summary()
        rows.append(
            [
                land.name,
                f"{s['origin_loss']:.3g}",
                f"{s['max_loss']:.3g}",
                f"{100 * s['nonconvex']:.0f}%",
            ]
        )
    table = _table(["network", "loss at the weights", "largest loss", "non-convex points"], rows)
    res, plain = (land.summary()["nonconvex"] for land in lands)
    verdict = (
        "As in Li et al., the surface without skips is the rougher one."
        if plain > res
        else "Here the two surfaces are about equally rough: at this depth and training budget "
        "the skips' smoothing (Li et al. see it clearly from 56 layers on) does not show."
    )
    text = (
        f"<p>The training loss around the weights of {html.escape(' and '.join(sources))}"
        f" on a {steps}×{steps} grid over [-1, 1]² along two random directions normalized filter "
        f"by filter (Li et al. 2018), averaged over {examples} training examples; log scale, one "
        "colour scale for both. <i>Non-convex points</i> is the share of grid points where the "
        f"surface curves downward in some direction (0 for a bowl). {verdict}</p>"
    )
    data = {"landscapes": [land.to_dict() for land in lands]}
    return ReportSection("Loss landscape", text + table, [(_caption(depth), _png(fig))], data)


def _caption(depth: int) -> str:
    return (
        f"Loss landscapes of ResNet-{depth} (left) and its plain twin (right): contours (the red "
        "star is the trained weights) and surfaces, log10 of the loss."
    )
