"""Report sections for ``skipkit demo``: plain vs residual twins, measured.

Each function returns a :class:`ReportSection` (a title, trusted HTML, captioned PNGs and the
numbers behind them in ``data``) that :meth:`skipkit.experiments.report.Report.add_section`
takes as it is::

    for s in report_sections(out_dir, depths=(20, 56)):
        report.add_section(s.title, s.html, s.images, data=s.data)

The sections: gradient flow (He et al. 2015, Fig. 7), shattered gradients (Balduzzi et al.
2017), the loss landscapes of the deepest pair (Li et al. 2018) and a lesion study of it
(Veit et al. 2016, in :mod:`skipkit.diagnostics.evidence`). The networks are the demo's:
:func:`skipkit.experiments.degradation.build_model` seeded with ``seed`` (so the initial
weights are the demo's), and, when the demo has trained them, the weights in
``out_dir/runs/<plain|residual>-<depth>/model.safetensors``.
"""

from __future__ import annotations

import html
import logging
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from skipkit.diagnostics._demo import ModelSource, ReportSection, net_label, png_bytes, twin_colors
from skipkit.diagnostics.evidence import lesion_section, shattering_section
from skipkit.diagnostics.gradflow import GradientFlow, gradient_flow
from skipkit.diagnostics.landscape import Landscape, loss_landscape
from skipkit.diagnostics.plot import plot_gradient_flow, plot_landscapes
from skipkit.experiments.degradation import check_depth
from skipkit.experiments.report import html_table

__all__ = [
    "ModelSource",
    "ReportSection",
    "gradient_flow_section",
    "landscape_section",
    "report_sections",
]

log = logging.getLogger(__name__)


def report_sections(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    depths: Sequence[int] = (20, 56),
    landscape_depth: int | None = None,
    dataset: str = "mnist1d",
    seed: int = 0,
    quick: bool = False,
    progress: bool = False,
    threads: int | None = 1,
) -> list[ReportSection]:
    """Gradient flow, shattered gradients, loss landscapes and the lesion study.

    Args:
        out_dir: the demo's output folder; trained weights are read from
            ``out_dir/runs/<plain|residual>-<depth>/model.safetensors`` when present.
        depths: the depths of the gradient-flow and shattering comparisons.
        landscape_depth: the depth whose two twins get a landscape and a lesion study
            (default: the deepest, 56 in the demo: where Li et al. see the difference).
        dataset: a name of :data:`skipkit.data.DATASETS`.
        seed: the demo's seed (same initial weights).
        quick: a seconds-long version (tiny grids, few examples) for smoke runs.
        progress: show tqdm bars for the landscape grids.
        threads: torch threads while measuring, restored afterwards (``None``: keep torch's
            setting). One by default: on a CPU shared with other jobs, torch's extra threads
            wait on busy cores, and one evaluation of ResNet-56 took 10 s with two threads
            against 1 s with one on this project's loaded 2-core machine.
    """
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _sections(out_dir, depths, landscape_depth, dataset, seed, quick, progress)
    finally:
        torch.set_num_threads(saved)


def _sections(
    out_dir: str | os.PathLike[str] | None,
    depths: Sequence[int],
    landscape_depth: int | None,
    dataset: str,
    seed: int,
    quick: bool,
    progress: bool,
) -> list[ReportSection]:
    for d in depths:
        check_depth(d)
    deep = check_depth(landscape_depth if landscape_depth is not None else max(depths))
    runs = Path(out_dir) / "runs" if out_dir is not None else None
    source = ModelSource(runs, dataset=dataset, seed=seed, train_epochs=1 if quick else 8)
    return [
        gradient_flow_section(depths=depths, source=source),
        shattering_section(
            source, depths=depths, lines=2 if quick else 4, points=32 if quick else 128
        ),
        landscape_section(
            depth=deep,
            source=source,
            steps=5 if quick else 11,
            examples=128 if quick else 500,
            progress=progress,
        ),
        lesion_section(
            source,
            depth=deep,
            ks=(1, 2) if quick else (1, 2, 4, 8),
            sets=3 if quick else 6,
            examples=256 if quick else 500,
        ),
    ]


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
    source: ModelSource | None = None,
) -> ReportSection:
    """Gradient norm against depth for the plain and residual twins at each depth, at
    initialization, and He et al.'s Fig. 7 (response std per layer) for the trained nets when
    their weights are in ``runs`` (``source`` replaces ``dataset``, ``seed`` and ``runs``)."""
    src = source or ModelSource(runs, dataset=dataset, seed=seed)
    batch = src.train_batch(examples)
    colors = twin_colors(depths)
    keys = [(d, s) for d in sorted(depths) for s in (False, True)]
    init: list[GradientFlow] = []
    trained: list[GradientFlow] = []
    for d, s in keys:
        model = src.initial(d, s)
        init.append(gradient_flow(model, batch, nn.CrossEntropyLoss(), name=net_label(d, s)))
        if src.weights(d, s) is not None:
            model, _ = src.trained(d, s)
            trained.append(gradient_flow(model, batch, nn.CrossEntropyLoss(), name=net_label(d, s)))
    images = [
        (
            "At initialization: gradient norm of each layer's output and of its weights against "
            "depth (log scale; dashed = plain, solid = residual).",
            png_bytes(
                plot_gradient_flow(
                    init,
                    keys=("act_grad_norm", "weight_grad_norm"),
                    colors=[colors[k] for k in keys],
                )
            ),
        )
    ]
    if trained:
        have = [k for k in keys if src.weights(*k) is not None]
        images.append(
            (
                "After training: gradient norms, and the std of each layer's response after BN "
                "(before the addition) — He et al. 2015, Fig. 7.",
                png_bytes(plot_gradient_flow(trained, colors=[colors[k] for k in have])),
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
    table = html_table(
        ["network (at init)", "layers", "‖∂L/∂a‖ first/last block layer (decades)", "grad ratio"],
        rows,
    )
    by = {f.name: _trunk_decades(f) for f in init}
    deep = max(depths)
    plain, res = by.get(net_label(deep, False), math.nan), by.get(net_label(deep, True), math.nan)
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
    depth: int = 56,
    dataset: str = "mnist1d",
    seed: int = 0,
    runs: Path | None = None,
    steps: int = 11,
    examples: int = 500,
    train_epochs: int = 8,
    progress: bool = False,
    source: ModelSource | None = None,
) -> ReportSection:
    """Li et al.'s 2-D loss landscape of the residual net of ``depth`` and its plain twin,
    trained (weights from ``runs``, or ``train_epochs`` of the default recipe here; ``source``
    replaces ``dataset``, ``seed``, ``runs`` and ``train_epochs``)."""
    src = source or ModelSource(runs, dataset=dataset, seed=seed, train_epochs=train_epochs)
    x, y = src.train_batch(examples, offset=1)
    lands: list[Landscape] = []
    sources = []
    for skip in (True, False):
        model, origin = src.trained(depth, skip)
        sources.append(origin)
        lands.append(
            loss_landscape(
                model,
                (x, y),
                nn.CrossEntropyLoss(),
                steps=steps,
                seed=src.seed,
                progress=progress,
                name=net_label(depth, skip),
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
    table = html_table(
        ["network", "loss at the weights", "largest loss", "non-convex points"], rows
    )
    res, plain = (land.summary()["nonconvex"] for land in lands)
    verdict = (
        f"As in Li et al., the surface without skips is the rougher one: {100 * plain:.0f}% of "
        f"its grid points are non-convex against {100 * res:.0f}% with skips."
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
    data = {
        "depth": depth,
        "steps": steps,
        "examples": examples,
        "sources": sources,
        "summary": [land.summary() for land in lands],
        "landscapes": [land.to_dict() for land in lands],
    }
    return ReportSection("Loss landscape", text + table, [(_caption(depth), png_bytes(fig))], data)


def _caption(depth: int) -> str:
    return (
        f"Loss landscapes of ResNet-{depth} (left) and its plain twin (right): contours (the red "
        "star is the trained weights) and surfaces, log10 of the loss."
    )
