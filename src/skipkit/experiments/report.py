"""A self-contained HTML report (plots embedded as base64 PNG) and the degradation figures.

:class:`Report` is a list of sections; anything can add one::

    report = degradation_report(result)                       # explanation, figure, table
    report.add_section("Gradient flow", "<p>...</p>", {"Gradient norm per layer": fig},
                       data={"norms": [...]})                # the numbers behind it
    report.write("runs/demo/report.html")
    report.data()                          # {"gradient_flow": {"norms": [...]}}, JSON-ready

Images are matplotlib figures, PNG bytes or paths to PNG files; the HTML references no other
file, so it can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from skipkit import __version__
from skipkit._io import atomic_write_bytes, atomic_write_text
from skipkit._lazy import import_optional
from skipkit.experiments.degradation import DegradationResult, ModelRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Image",
    "Report",
    "Section",
    "degradation_figures",
    "degradation_report",
    "environment",
    "html_table",
    "plot_degradation",
    "plot_final_errors",
    "png_bytes",
    "write_degradation_report",
]

_DATASET_NAMES = {"mnist1d": "MNIST-1D", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

# plain nets in warm colours, residual nets in cool ones; darker = deeper
_PLAIN = ("#f4a582", "#d6604d", "#b2182b", "#67001f")
_RESIDUAL = ("#92c5de", "#4393c3", "#2166ac", "#053061")


def png_bytes(image: Any, *, dpi: int = 130) -> bytes:
    """PNG bytes of a matplotlib figure, of PNG bytes, or of a PNG file's path."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if hasattr(image, "savefig"):
        buf = io.BytesIO()
        image.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return buf.getvalue()
    raise TypeError(f"cannot embed {type(image).__name__}: give a Figure, PNG bytes or a path")


@dataclass
class Image:
    """A PNG with a caption."""

    caption: str
    png: bytes

    def to_html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        cap = html.escape(self.caption)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{cap}">'
            f"<figcaption>{cap}</figcaption></figure>"
        )


@dataclass
class Section:
    """A titled part of the report: trusted HTML, then images; ``data`` holds the numbers
    behind them (JSON-ready) for :meth:`Report.data`."""

    title: str
    html: str = ""
    images: list[Image] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The title as a JSON key: ``"Loss landscape"`` -> ``"loss_landscape"``."""
        return "_".join(re.findall(r"[a-z0-9]+", self.title.lower()))

    def to_html(self) -> str:
        imgs = "".join(i.to_html() for i in self.images)
        return f"<section><h2>{html.escape(self.title)}</h2>{self.html}{imgs}</section>"


class Report:
    """An HTML report built from sections, in the order they are added."""

    def __init__(self, title: str, *, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def add_section(
        self,
        title: str,
        html: str = "",
        images: Mapping[str, Any] | Sequence[tuple[str, Any]] = (),
        *,
        index: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Section:
        """Append (or insert at ``index``) a section.

        Args:
            title: the heading (escaped).
            html: the body, inserted as is: escape any untrusted text yourself.
            images: caption -> figure / PNG bytes / PNG path, shown after the body.
            data: the numbers behind the section (JSON-ready), returned by :meth:`data`.
        """
        pairs = images.items() if isinstance(images, Mapping) else images
        section = Section(
            title, html, [Image(c, png_bytes(img)) for c, img in pairs], dict(data or {})
        )
        if index is None:
            self.sections.append(section)
        else:
            self.sections.insert(index, section)
        return section

    def data(self) -> dict[str, dict[str, Any]]:
        """``{section key: its data}`` for the sections that carry data, in order."""
        return {s.key: s.data for s in self.sections if s.data}

    def to_html(self) -> str:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        sub = f"<p class=sub>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        body = "\n".join(s.to_html() for s in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{html.escape(self.title)}</h1>{sub}\n{body}\n"
            f"<footer>skipkit {html.escape(__version__)} · {stamp}</footer>"
            "</main></body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the HTML file atomically and return its path."""
        path = Path(path)
        atomic_write_text(path, self.to_html())
        return path


_CSS = """
body{margin:0;background:#f6f7f9;color:#1d2430;font:16px/1.55 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif}
main{max-width:980px;margin:0 auto;padding:28px 32px 40px;background:#fff;min-height:100vh;
box-shadow:0 0 0 1px #e3e6eb}
h1{font-size:28px;margin:6px 0 2px}h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;
border-bottom:1px solid #e3e6eb}
.sub{color:#5b6473;margin:0 0 8px}
p{margin:8px 0}
figure{margin:16px 0}figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#5b6473;font-size:14px;text-align:center;margin-top:4px}
table{border-collapse:collapse;margin:10px 0;font-variant-numeric:tabular-nums;width:100%}
th,td{padding:6px 12px;border-bottom:1px solid #e3e6eb;text-align:right}
th:first-child,td:first-child{text-align:left}
table.narrow{width:auto;min-width:320px}
th{background:#f0f2f5;font-weight:600}
tr.plain td:first-child{border-left:4px solid #b2182b}
tr.residual td:first-child{border-left:4px solid #2166ac}
.callout{padding:10px 14px;border-radius:6px;margin:12px 0}
.ok{background:#eaf4ea;border:1px solid #b9dcb9}.warn{background:#fdf3e1;border:1px solid #f0d7a6}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:14px}
footer{margin-top:36px;color:#8a93a2;font-size:13px}
"""


def html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    row_classes: Sequence[str] | None = None,
    css_class: str | None = None,
) -> str:
    """An HTML table; cell values are converted with ``str`` and escaped.

    ``css_class="narrow"`` sizes the table to its content instead of the page width.
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{html.escape(row_classes[i])}"' if row_classes else ""
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    cls = f' class="{html.escape(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------ figures


def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure (matplotlib is imported on first use: see :mod:`skipkit._lazy`)."""
    module = import_optional("matplotlib.figure", purpose="plotting")
    figure: Figure = module.Figure(figsize=(width, height), layout="constrained")
    return figure


def plot_degradation(result: DegradationResult) -> Figure:
    """Training error per epoch, plain nets left and residual nets right (He et al. Fig. 6).

    Solid lines: training error; dashed: test error. One shared y-axis, in percent.
    """
    ticker = import_optional("matplotlib.ticker", purpose="plotting")
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, skip, colors in ((axes[0], False, _PLAIN), (axes[1], True, _RESIDUAL)):
        kind = "residual" if skip else "plain"
        for i, depth in enumerate(result.depths):
            run = result.get(depth, skip)
            color = colors[min(len(colors) - 1, i + max(0, len(colors) - len(result.depths)))]
            epochs = range(1, len(run.train_curve) + 1)
            ax.plot(
                epochs,
                [100 * e for e in run.train_curve],
                color=color,
                lw=2.2,
                label=f"{kind}-{depth} train",
            )
            ax.plot(
                epochs,
                [100 * e for e in run.test_curve],
                color=color,
                lw=1.2,
                ls="--",
                label=f"{kind}-{depth} test",
            )
        ax.set_title(f"{kind.capitalize()} networks", fontsize=13)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=9)
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("error (%)")
    return fig


def plot_final_errors(result: DegradationResult) -> Figure:
    """Final training and test error of every run as grouped bars (percent)."""
    fig = _figure(11, 3.4)
    ax = fig.subplots()
    names = [r.name for r in result.runs]
    xs = range(len(names))
    colors = [_color(result, r) for r in result.runs]
    train = [100 * r.train_error for r in result.runs]
    test = [100 * r.test_error for r in result.runs]
    ax.bar([x - 0.2 for x in xs], train, width=0.4, color=colors, label="train")
    ax.bar(
        [x + 0.2 for x in xs], test, width=0.4, color=colors, alpha=0.45, hatch="//", label="test"
    )
    for x, v in zip(xs, train, strict=True):
        ax.annotate(f"{v:.1f}", (x - 0.2, v), ha="center", va="bottom", fontsize=8)
    for x, v in zip(xs, test, strict=True):
        ax.annotate(f"{v:.1f}", (x + 0.2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("final error (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
    ax.margins(y=0.15)
    return fig


def _color(result: DegradationResult, run: ModelRun) -> str:
    colors = _RESIDUAL if run.skip else _PLAIN
    i = result.depths.index(run.depth)
    return colors[min(len(colors) - 1, i + max(0, len(colors) - len(result.depths)))]


# ------------------------------------------------------------------------------------- report


def degradation_figures(result: DegradationResult, *, dpi: int = 130) -> dict[str, bytes]:
    """``{"degradation.png": curves, "final_errors.png": bars}`` as PNG bytes."""
    return {
        "degradation.png": png_bytes(plot_degradation(result), dpi=dpi),
        "final_errors.png": png_bytes(plot_final_errors(result), dpi=dpi),
    }


def degradation_report(
    result: DegradationResult, *, figures: Mapping[str, bytes] | None = None
) -> Report:
    """The degradation report: explanation, curves, final errors, table and settings.

    ``figures`` reuses the PNGs of :func:`degradation_figures` when given.
    """
    figs = figures if figures is not None else degradation_figures(result)
    lo, hi = min(result.depths), max(result.depths)
    data = _DATASET_NAMES.get(result.dataset, result.dataset)
    depths = ", ".join(map(str, result.depths))
    report = Report(
        "The degradation problem: plain vs residual networks",
        subtitle=f"{data} · depths {depths} · {result.config.get('epochs')} epochs · "
        f"{result.seconds / 60:.1f} min",
    )
    report.add_section("What this experiment shows", _explanation(result, lo, hi))
    report.add_section(
        "Training curves",
        "<p>Solid lines are the training error, dashed lines the test error, after every "
        "epoch. Compare the curves within each panel: does the deeper network (darker) end "
        "below or above the shallower one?</p>",
        [
            (
                f"Error per epoch on {data}: plain networks (left), residual (right)",
                figs["degradation.png"],
            )
        ],
    )
    rows = [
        [
            r.name,
            r.depth,
            "yes" if r.skip else "no",
            f"{r.params:,}",
            f"{100 * r.train_error:.2f}%",
            f"{100 * r.test_error:.2f}%",
            f"{r.train_loss:.4f}",
            f"{r.seconds:.0f} s",
        ]
        for r in result.runs
    ]
    table = html_table(
        [
            "model",
            "layers",
            "skips",
            "parameters",
            "train error",
            "test error",
            "train loss",
            "time",
        ],
        rows,
        row_classes=[r.kind for r in result.runs],
    )
    report.add_section(
        "Final errors",
        table + "<p>The training error here is that of the final network on the whole "
        "training set; the curves above show the running error during each epoch, so their "
        "last point can be slightly higher. MNIST-1D has 4000 training and 1000 test "
        "examples: 0.1% of the training set is 4 examples.</p>"
        if result.dataset == "mnist1d"
        else table + "<p>The training error here is that of the final network on the whole "
        "training set; the curves above show the running error during each epoch.</p>",
        [("Final training (solid) and test (hatched) error", figs["final_errors.png"])],
    )
    report.add_section("Settings", _settings(result))
    return report


def _explanation(result: DegradationResult, lo: int, hi: int) -> str:
    intro = (
        "<p>A deeper network can do everything a shallower one can: its extra layers could "
        "simply pass their input through. So, trained the same way, a deeper network should "
        "never fit its <em>training</em> data worse. Plain networks do. He et al. (2015, "
        "figures 1 and 6) found that a 56-layer plain network ends with a higher training "
        "error than a 20-layer one. This is not overfitting, since the error is measured on "
        "the training data itself. It is an optimisation problem: a stack of layers finds it "
        "hard to learn even the identity.</p>"
        "<p>A residual block computes <code>y = F(x) + x</code>. Doing nothing is just "
        "<code>F = 0</code>, and the signal and its gradient have a direct path through "
        "every block. Each residual network here is the plain network of the same depth, "
        "with the same layers and the same initial weights, plus the skips.</p>"
    )
    if len(result.depths) < 2:
        return intro
    p_lo, p_hi = result.get(lo, False), result.get(hi, False)
    r_lo, r_hi = result.get(lo, True), result.get(hi, True)
    verdict = result.verdict()

    def pct(r: ModelRun) -> str:
        return f"{100 * r.train_error:.2f}%"

    seen = (
        f"<p><b>In this run:</b> plain-{hi} ends at <b>{pct(p_hi)}</b> training error against "
        f"{pct(p_lo)} for plain-{lo}; residual-{hi} ends at <b>{pct(r_hi)}</b> against "
        f"{pct(r_lo)} for residual-{lo}.</p>"
    )
    if verdict["plain_degrades"] and verdict["residual_holds"]:
        box = (
            '<div class="callout ok">The degradation problem shows: adding layers made the '
            "plain network worse at fitting its training data, and the skips removed the "
            "effect.</div>"
        )
    else:
        box = (
            '<div class="callout warn">The effect did not show clearly in this run. Short '
            "runs (such as <code>--quick</code>) and shallow depths are often too small for it; "
            "the full <code>skipkit demo</code> trains 20- and 56-layer networks long enough."
            "</div>"
        )
    return intro + seen + box


def _settings(result: DegradationResult) -> str:
    cfg = result.config
    keys = (
        "dataset",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "batch_size",
        "schedule",
        "epochs",
        "seed",
    )
    values = {**cfg, "dataset": _DATASET_NAMES.get(result.dataset, result.dataset)}
    rows = [[k.replace("_", " "), values[k]] for k in keys if k in values]
    return html_table(["setting", "value"], rows, css_class="narrow") + (
        "<p>The recipe of He et al. for CIFAR (SGD with momentum 0.9, weight decay 1e-4, "
        "batch 128, learning rate 0.1) with a one-cycle schedule in place of 182 epochs of "
        "step decay. Shortcuts are the paper's option A: identity, or subsample and zero-pad "
        "where a stage changes the shape.</p>"
    )


def write_degradation_report(
    result: DegradationResult,
    out_dir: str | os.PathLike[str],
    *,
    extend: Callable[[Report], None] | None = None,
) -> Path:
    """Write ``report.html``, ``degradation.png``, ``final_errors.png`` and ``results.json``.

    ``extend`` is called with the report before it is written, to add sections. The numbers
    of every section that carries data go into ``results.json`` under ``"sections"`` (keyed
    by :attr:`Section.key`), next to the training runs and an ``"environment"`` entry (torch
    version, CPU instruction set, core count: what the exact numbers depend on).

    Returns:
        the path of ``report.html``.
    """
    out = Path(out_dir)
    figures = degradation_figures(result)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    result.save(out / "results.json")  # the training runs are kept even if a section fails
    report = degradation_report(result, figures=figures)
    if extend is not None:
        extend(report)
    doc = {**result.to_dict(), "environment": environment(), "sections": report.data()}
    atomic_write_text(out / "results.json", json.dumps(_finite(doc), indent=1) + "\n")
    return report.write(out / "report.html")


def _finite(v: Any) -> Any:
    """``v`` with NaN and infinities as ``None``: strict JSON, readable by any tool."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def environment() -> dict[str, Any]:
    """What bit-exact numbers depend on: the torch build, the CPU instruction set torch's
    kernels use (``ATEN_CPU_CAPABILITY``), the cores and the python version."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
