"""Pictures of the diagnostics. The only module of :mod:`skipkit.diagnostics` that uses
matplotlib; it is imported when a function here runs (through :func:`_mpl`: it takes
about 0.7 s, see :mod:`skipkit._lazy`), and only its object-oriented API
(``Figure`` rendered by the Agg canvas) is used, so no window opens and the caller's pyplot
backend is left alone.

Every ``plot_*`` function draws a :class:`matplotlib.figure.Figure`, writes it to ``path``
when one is given (the format follows the suffix: ``.png``, ``.pdf``, ``.svg``) and returns it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from skipkit._lazy import import_optional

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from skipkit.diagnostics.gradflow import GradientFlow
    from skipkit.diagnostics.landscape import Landscape
    from skipkit.diagnostics.lesion import Lesion
    from skipkit.diagnostics.shatter import Shattering

__all__ = [
    "plot_flow_in_time",
    "plot_gradient_flow",
    "plot_landscape",
    "plot_landscapes",
    "plot_lesion",
    "plot_shattering",
]

PathLike = str | os.PathLike[str]

_FLOW_PANELS = {
    "act_grad_norm": "activation gradient ‖∂L/∂a‖",
    "weight_grad_norm": "weight gradient ‖∂L/∂W‖",
    "response_std": "response std (after BN, before the add)",
}


def _mpl(name: str) -> Any:
    """The module ``matplotlib.<name>``, imported on first use."""
    return import_optional(f"matplotlib.{name}", purpose="plotting")


def _figure(width: float, height: float) -> Figure:
    figure: Figure = _mpl("figure").Figure(figsize=(width, height), layout="constrained")
    return figure


def _save(fig: Figure, path: PathLike | None, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def plot_gradient_flow(
    flows: Sequence[GradientFlow],
    path: PathLike | None = None,
    *,
    keys: Sequence[str] = ("act_grad_norm", "weight_grad_norm", "response_std"),
    labels: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 130,
) -> Figure:
    """Per-layer quantities against depth, one line per model, log scale.

    Args:
        flows: results of :func:`~skipkit.diagnostics.gradient_flow` (e.g. a plain net and
            its residual twin at two depths).
        path: where to write the figure (``None``: only return it).
        keys: one panel per :class:`~skipkit.diagnostics.LayerFlow` field; the default shows
            the output-gradient norm, the weight-gradient norm and He et al.'s response std.
        labels: legend entries (default: each flow's ``name``).
        colors: one matplotlib colour per flow.
        title: the figure title.
    """
    if not flows:
        raise ValueError("plot_gradient_flow needs at least one GradientFlow")
    ticker = _mpl("ticker")
    fig = _figure(4.6 * len(keys), 3.9)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    names = list(labels) if labels is not None else [f.name for f in flows]
    for ax, key in zip(axes, keys, strict=True):
        for i, f in enumerate(flows):
            ys = np.asarray(f.column(key), dtype=float)
            xs = np.asarray([layer.depth for layer in f.layers])
            ok = np.isfinite(ys) & (ys > 0)
            color = colors[i] if colors is not None else None
            style = "--" if _is_plain(names[i]) else "-"
            ax.plot(xs[ok], ys[ok], style, color=color, lw=1.6, marker=".", ms=4, label=names[i])
        if key != "response_std":  # a std near 1 reads better on a linear axis
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel("layer (depth, input → output)")
        ax.set_title(_FLOW_PANELS.get(key, key), fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _is_plain(label: str) -> bool:
    return "plain" in label.lower() or "no skip" in label.lower()


def plot_flow_in_time(
    history: Sequence[GradientFlow],
    path: PathLike | None = None,
    *,
    key: str = "act_grad_norm",
    title: str | None = None,
    dpi: int = 130,
) -> Figure:
    """A heat map of ``log10(key)`` over (training step, depth) from a
    :class:`~skipkit.diagnostics.GradientFlowRecorder`'s snapshots."""
    if not history:
        raise ValueError("no snapshots recorded (is every larger than the number of steps?)")
    depth = max(len(f.layers) for f in history)
    grid = np.full((depth, len(history)), np.nan)
    for j, f in enumerate(history):
        col = np.asarray(f.column(key), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            grid[: len(col), j] = np.where(col > 0, np.log10(col), np.nan)
    steps = [f.step if f.step is not None else j for j, f in enumerate(history)]
    fig = _figure(7.5, 4.2)
    ax = fig.subplots()
    extent = (-0.5, len(history) - 0.5, depth + 0.5, 0.5)
    im = ax.imshow(grid, aspect="auto", cmap="viridis", extent=extent, interpolation="nearest")
    ticks = np.unique(np.linspace(0, len(history) - 1, min(len(history), 8)).round().astype(int))
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
    ax.yaxis.set_major_locator(_mpl("ticker").MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("layer (depth)")
    fig.colorbar(im, ax=ax, label=f"log10 {_FLOW_PANELS.get(key, key)}")
    ax.set_title(title or f"{history[0].name}: {_FLOW_PANELS.get(key, key)} during training")
    return _save(fig, path, dpi)


# ------------------------------------------------------------------------------ landscapes


def _log_loss(loss: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.where(np.isfinite(loss) & (loss > 0), loss, np.nan))
    return z


def _levels(zs: Sequence[np.ndarray], n: int = 24) -> np.ndarray:
    """Round contour levels covering every finite value of ``zs``."""
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs] or [np.zeros(1)])
    if finite.size == 0:
        finite = np.zeros(1)
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        hi = lo + 1e-3
    locator = _mpl("ticker").MaxNLocator(nbins=n)
    ticks: np.ndarray = np.array(list(locator.tick_values(lo, hi)), dtype=float)
    first, last = ticks[ticks <= lo].max(), ticks[ticks >= hi].min()
    return ticks[(ticks >= first) & (ticks <= last)]


def _contour(ax: Axes, land: Landscape, levels: np.ndarray) -> Any:
    x, y = land.coords
    z = _log_loss(land.loss).T  # rows = y for contourf
    cs = ax.contourf(x, y, np.clip(z, levels[0], levels[-1]), levels=levels, cmap="viridis")
    ax.contour(
        x, y, z, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.6, linestyles="solid"
    )
    ax.plot([0], [0], marker="*", color="#d62728", ms=10, mec="white", mew=0.8)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_aspect("equal", adjustable="box")
    return cs


def _surface(ax: Any, land: Landscape, levels: np.ndarray) -> None:
    x, y = land.coords
    xx, yy = np.meshgrid(x, y, indexing="ij")
    z = np.clip(_log_loss(land.loss), levels[0], levels[-1])
    z = np.where(np.isfinite(z), z, levels[-1])
    ax.plot_surface(
        xx,
        yy,
        z,
        cmap="viridis",
        vmin=levels[0],
        vmax=levels[-1],
        rstride=1,
        cstride=1,
        linewidth=0.15,
        edgecolor="k",
        antialiased=True,
        alpha=0.95,
    )
    ax.set_zlim(levels[0], levels[-1])
    for axis, c in ((ax.xaxis, x), (ax.yaxis, y)):
        axis.set_ticks(np.unique(np.round([c[0], (c[0] + c[-1]) / 2, c[-1]], 2)))
    ax.set_xlabel("dir. 1", labelpad=-4)
    ax.set_ylabel("dir. 2", labelpad=-4)
    ax.set_zlabel("log10 loss", labelpad=-2)
    ax.tick_params(labelsize=7, pad=-2)
    ax.view_init(elev=32, azim=-55)
    ax.set_box_aspect(None, zoom=0.82)  # room for the axis labels


def _slices(ax: Axes, land: Landscape) -> None:
    x, y = land.coords
    i0, j0 = int(np.argmin(np.abs(x))), int(np.argmin(np.abs(y)))
    ax.plot(x, land.loss[:, j0], "-", color="#2166ac", lw=1.8, label="along direction 1")
    ax.plot(y, land.loss[i0, :], "-", color="#b2182b", lw=1.8, label="along direction 2")
    ax.set_yscale("log")
    ax.set_xlabel("offset")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(True, alpha=0.3)


def _curve(ax: Axes, land: Landscape, *, color: str = "#2166ac", label: str | None = None) -> None:
    x = land.coords[0]
    ax.plot(x, land.loss, "-", color=color, lw=1.9, label=label or "loss")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if land.kind == "interpolation":
        ax.set_xlabel("a   (θ = A + a·(B − A))")
        for a in (0.0, 1.0):
            ax.axvline(a, color="#888", lw=0.8, ls=":")
    else:
        ax.set_xlabel("offset along the direction")
    if np.isfinite(land.accuracy).any():
        twin = ax.twinx()
        twin.plot(x, 100 * land.accuracy, "--", color=color, lw=1.2, alpha=0.7)
        twin.set_ylabel("accuracy (%, dashed)")
        twin.set_ylim(0, 100)


def plot_landscape(
    land: Landscape,
    path: PathLike | None = None,
    *,
    title: str | None = None,
    dpi: int = 130,
) -> Figure:
    """A 2-D landscape as filled contours of ``log10 loss`` (the red star is the trained
    weights), a 3-D surface and the two 1-D slices through the origin; a 1-D landscape as its
    loss curve (and accuracy, dashed, when known)."""
    name = title or f"{land.name}: loss landscape ({land.kind})"
    if land.dims == 1:
        fig = _figure(6.0, 4.0)
        _curve(fig.subplots(), land)
        fig.suptitle(name)
        return _save(fig, path, dpi)
    fig = _figure(16.0, 4.8)
    levels = _levels([_log_loss(land.loss)])
    ax1 = fig.add_subplot(1, 3, 1)
    cs = _contour(ax1, land, levels)
    fig.colorbar(cs, ax=ax1, label="log10 loss", shrink=0.85)
    ax1.set_title("contours", fontsize=11)
    ax2 = fig.add_subplot(1, 3, 2, projection="3d")
    _surface(ax2, land, levels)
    ax2.set_title("surface", fontsize=11)
    ax3 = fig.add_subplot(1, 3, 3)
    _slices(ax3, land)
    ax3.set_title("1-D slices through the weights", fontsize=11)
    fig.suptitle(name)
    return _save(fig, path, dpi)


def plot_landscapes(
    lands: Sequence[Landscape],
    path: PathLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 130,
) -> Figure:
    """Several landscapes on one colour scale: for 2-D, one column per landscape (contours
    above, surface below); for 1-D, all curves in one panel. Li et al.'s Fig. 5/6 comparison:
    a net with and without skips."""
    if not lands:
        raise ValueError("plot_landscapes needs at least one Landscape")
    names = list(labels) if labels is not None else [land.name for land in lands]
    if any(land.dims != lands[0].dims for land in lands):
        raise ValueError("plot_landscapes needs landscapes of one dimensionality")
    if lands[0].dims == 1:
        fig = _figure(6.5, 4.2)
        ax = fig.subplots()
        palette = ("#2166ac", "#b2182b", "#1b7837", "#762a83")
        for i, land in enumerate(lands):
            _curve(ax, land, color=palette[i % len(palette)], label=names[i])
        ax.legend(fontsize=9, frameon=False)
        if title:
            fig.suptitle(title)
        return _save(fig, path, dpi)
    levels = _levels([_log_loss(land.loss) for land in lands])
    cols = len(lands)
    fig = _figure(4.8 * cols + 1.2, 8.6)
    cs = None
    flat = []
    for c, land in enumerate(lands):
        ax = fig.add_subplot(2, cols, c + 1)
        cs = _contour(ax, land, levels)
        ax.set_title(f"{names[c]}: contours", fontsize=11)
        flat.append(ax)
        ax3 = fig.add_subplot(2, cols, cols + c + 1, projection="3d")
        _surface(ax3, land, levels)
        ax3.set_title(f"{names[c]}: surface", fontsize=11)
    if cs is not None:
        fig.colorbar(cs, ax=flat, label="log10 loss", shrink=0.9)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


# ------------------------------------------------------------------- lesions and shattering


def _palette(n: int, colors: Sequence[str] | None) -> list[str]:
    base = ("#2166ac", "#b2182b", "#1b7837", "#762a83", "#e08214", "#4d4d4d")
    return list(colors) if colors is not None else [base[i % len(base)] for i in range(n)]


def plot_lesion(
    lesions: Sequence[Lesion],
    path: PathLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 130,
) -> Figure:
    """Veit et al.'s lesion figures: left, the error with each block deleted alone (one bar
    per block and model, input to output; grey band: a stage-changing block, ``x``: a block
    that cannot be deleted; dotted lines: the intact models); right, the error against the
    number of deleted blocks (mean and min–max over the random sets). Errors in percent."""
    if not lesions:
        raise ValueError("plot_lesion needs at least one Lesion")
    names = list(labels) if labels is not None else [les.name for les in lesions]
    cols = _palette(len(lesions), colors)
    fig = _figure(13.0, 4.2)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    Patch = _mpl("patches").Patch
    width = 0.8 / len(lesions)
    for j, b in enumerate(lesions[0].blocks):
        if b.stage_change:
            ax.axvspan(j - 0.5, j + 0.5, color="#e3e6eb", zorder=0)
    for i, les in enumerate(lesions):
        xs = np.arange(len(les.blocks)) + (i - (len(lesions) - 1) / 2) * width
        ys = [100 * b.error if b.error is not None else 0.0 for b in les.blocks]
        ax.bar(xs, ys, width=width, color=cols[i], zorder=2)
        gone = [x for x, b in zip(xs, les.blocks, strict=True) if b.error is None]
        ax.plot(gone, [1.5] * len(gone), "x", color=cols[i], ms=7, mew=2, zorder=3)
        ax.axhline(100 * les.error, color=cols[i], ls=":", lw=1.2, zorder=1)
        ks = les.by_k()
        kx = np.asarray(list(ks))
        mean = np.asarray([100 * v["mean"] for v in ks.values()])
        lo = mean - np.asarray([100 * v["min"] for v in ks.values()])
        hi = np.asarray([100 * v["max"] for v in ks.values()]) - mean
        style = "--" if _is_plain(names[i]) else "-"
        ax2.errorbar(
            kx,
            mean,
            yerr=[lo, hi],
            fmt=style,
            marker="o",
            ms=4,
            color=cols[i],
            capsize=3,
            label=names[i],
        )
    handles = [Patch(color=c, label=n) for c, n in zip(cols, names, strict=True)]
    handles.append(Patch(color="#e3e6eb", label="stage change"))
    ax.set_xlabel("deleted block (input → output); x: cannot be deleted")
    ax.set_ylabel("test error (%)")
    ax.set_title("one block deleted (dotted: intact)", fontsize=11)
    ax.set_ylim(0, 112)  # room for the legend above the bars
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=9, frameon=False, loc="upper center", ncol=3)
    ax2.set_xlabel("blocks deleted")
    ax2.set_title("error against blocks deleted", fontsize=11)
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_shattering(
    results: Sequence[Shattering],
    path: PathLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 130,
) -> Figure:
    """Balduzzi et al.'s gradient correlation ``r(k)`` against the distance between the two
    inputs (a fraction of the input's norm), one line per model (dashed: plain)."""
    if not results:
        raise ValueError("plot_shattering needs at least one Shattering")
    names = list(labels) if labels is not None else [r.name for r in results]
    cols = _palette(len(results), colors)
    fig = _figure(6.8, 4.2)
    ax = fig.subplots()
    for i, r in enumerate(results):
        style = "--" if _is_plain(names[i]) else "-"
        ax.plot(r.offsets, r.correlation, style, color=cols[i], lw=1.8, label=names[i])
    ax.axhline(0.0, color="#8a93a2", lw=0.8)
    ax.set_xlabel("distance between the inputs (fraction of ‖x‖)")
    ax.set_ylabel("correlation of the input gradients")
    ax.set_ylim(-0.2, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, frameon=False)
    ax.set_title(title or "shattered gradients (Balduzzi et al. 2017)", fontsize=11)
    return _save(fig, path, dpi)
