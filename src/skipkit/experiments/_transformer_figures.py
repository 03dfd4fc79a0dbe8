"""The figures of ``skipkit transformers`` (see :mod:`skipkit.experiments.transformer`).

Every figure is drawn from :func:`figure_data` alone, and the report puts those numbers into
``results.json`` under ``"sections"``: the JSON holds everything the figures show. This module
imports matplotlib; :func:`skipkit.experiments.transformer.write_report` loads it to draw."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from skipkit.experiments.transformer import VariantRun

__all__ = ["CAPTIONS", "COLORS", "CURVES", "FLOW", "GAIN", "figure_data", "plot"]

COLORS = {"plain": "#b2182b", "post": "#ef8a62", "pre": "#2166ac", "hyper": "#1b7837",
          "mhc": "#762a83"}  # fmt: skip

CURVES, FLOW, GAIN = (
    "Training curves",
    "Gradient flow at initialisation",
    "Composite mixing gain across depth",
)


def figure_data(runs: list[VariantRun]) -> dict[str, dict[str, Any]]:
    """The numbers each figure draws, by section title, then by run name (``"pre-6"``):
    curves ``{"steps", "accuracy", "loss"}``, gradient flow ``{"layers",
    "weight_grad_norm"}`` (the blocks' linear layers, see
    :meth:`~skipkit.experiments.transformer.VariantRun.block_grads`), mixing gain ``{"sublayers",
    "gain"}`` (multi-stream runs only)."""
    data: dict[str, dict[str, Any]] = {
        CURVES: {r.name: {"steps": r.steps, "accuracy": r.accuracy, "loss": r.loss} for r in runs},
        FLOW: {
            r.name: dict(zip(("layers", "weight_grad_norm"), r.block_grads(), strict=True))
            for r in runs
            if r.grad_norms
        },
        GAIN: {
            r.name: {"sublayers": list(range(1, len(r.gains) + 1)), "gain": r.gains}
            for r in runs
            if r.gains
        },
    }
    return {k: v for k, v in data.items() if v}


def plot(title: str, series: Mapping[str, Any], depths: list[int], chance: float) -> Figure:
    """The figure of section ``title`` from its :func:`figure_data` entry: one column per
    depth; every line is one series, labelled with its variant."""
    rows = 2 if title == CURVES else 1
    fig = Figure(figsize=(3.6 * len(depths) + 0.6, 3.0 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, len(depths), sharey="row", squeeze=False)
    for col, d in enumerate(depths):
        for name, v in series.items():
            variant, depth = name.rsplit("-", 1)
            if int(depth) != d:
                continue
            c = COLORS.get(variant, "#333")
            if title == CURVES:
                axes[0][col].plot(v["steps"], v["accuracy"], color=c, lw=2, label=variant)
                axes[1][col].plot(v["steps"], v["loss"], color=c, lw=2, label=variant)
            elif title == FLOW:
                layers = range(1, len(v["weight_grad_norm"]) + 1)
                axes[0][col].semilogy(layers, v["weight_grad_norm"], color=c, label=variant)
            else:
                axes[0][col].plot(v["sublayers"], v["gain"], color=c, marker="o", label=variant)
        axes[0][col].set_title(f"depth {d}")
        axes[-1][col].set_xlabel(
            {CURVES: "step", FLOW: "linear layer of the blocks (input side first)"}.get(
                title, "sublayers composed"
            )
        )
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            if title != CURVES:  # layers and sublayers are counted
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == CURVES:
            axes[0][col].axhline(chance, color="#999", ls=":", lw=1)
    ylabels = {
        CURVES: ("test accuracy", "train loss"),
        FLOW: ("‖∂L/∂W‖ at init",),
        GAIN: ("gain after training",),
    }[title]
    for ax, label in zip(axes[:, 0], ylabels, strict=True):
        ax.set_ylabel(label)
    axes[0][0].legend(frameon=False, fontsize=8)
    return fig


CAPTIONS = {
    CURVES: "Test accuracy (top) and mean training loss (bottom) per depth; dotted: chance",
    FLOW: "The gradient reaching each linear layer of the blocks at initialisation, per depth "
    "(pre, hyper and mhc coincide: a hyper-connected network equals its pre-norm network then)",
    GAIN: "Gain of the composite residual mapping A_r(1)···A_r(k) after training (the larger "
    "of its largest absolute row and column sum): mHC's is 1 by construction, HC's is free",
}
