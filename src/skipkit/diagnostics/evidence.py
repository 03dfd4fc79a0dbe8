"""Report sections for two results about why skips work, measured on the demo's networks.

- :func:`lesion_section` — Veit et al. 2016: the test error of the trained residual net and
  its plain twin with each block deleted, and with ``k`` random blocks deleted.
- :func:`shattering_section` — Balduzzi et al. 2017: the correlation of the input gradients
  of nearby inputs, plain vs residual, at every depth (at initialization) and for the
  trained pair.

Both return a :class:`~skipkit.diagnostics.sections.ReportSection` whose ``data`` holds every
number behind its figure and text; :func:`~skipkit.diagnostics.sections.report_sections`
adds them to the demo's report. Every sentence of the text is derived from those numbers.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections.abc import Sequence

import torch
from torch import nn

from skipkit.diagnostics._demo import ModelSource, ReportSection, net_label, png_bytes, twin_colors
from skipkit.diagnostics.lesion import Lesion, lesion
from skipkit.diagnostics.plot import plot_lesion, plot_shattering
from skipkit.diagnostics.shatter import Shattering, shattering
from skipkit.experiments.report import html_table
from skipkit.skips import SkipModule, skips_disabled

__all__ = ["lesion_section", "shattering_section"]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _pp(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:+.1f} pp"


# ---------------------------------------------------------------------------------- lesion


def lesion_section(
    source: ModelSource,
    *,
    depth: int = 56,
    ks: Sequence[int] = (1, 2, 4, 8),
    sets: int = 6,
    examples: int | None = 500,
) -> ReportSection:
    """Veit et al.'s lesion study on the trained residual net of ``depth`` and its plain twin.

    The plain twin is the residual architecture with the plain net's weights inside
    :func:`skipkit.skips_disabled` (the same function as the plain net), so both are deleted
    through the skip protocol. ``examples`` limits the test set (``None``: all of it).
    """
    x, y = source.test_set(examples)
    results: list[Lesion] = []
    origins = []
    for skip in (True, False):
        model, origin = source.trained(depth, skip, as_residual=True)
        origins.append(origin)
        # the two stage changes of a CIFAR ResNet are not drawn into the k-sets
        pool = sum(isinstance(m, SkipModule) for m in model.modules()) - 2
        usable = [k for k in ks if k <= max(pool, 1)]
        with skips_disabled(model) if not skip else contextlib.nullcontext():
            results.append(
                lesion(
                    model,
                    (x, y),
                    k=usable,
                    sets=sets,
                    seed=source.seed,
                    name=net_label(depth, skip),
                )
            )
    res, plain = results
    fig = plot_lesion(results, colors=["#2166ac", "#b2182b"])
    rows = []
    for r in results:
        s = r.summary()
        within, stage = s["within_stage"] or {}, s["stage_change"] or {}
        top = r.by_k()
        kmax = max(top)
        rows.append(
            [
                r.name,
                _pct(r.error),
                _pp(within.get("mean_increase")),
                _pp(within.get("max_increase")),
                _pp(stage.get("mean_increase")) if stage else "not deletable",
                f"{_pct(top[kmax]['mean'])} (k={kmax})",
            ]
        )
    table = html_table(
        [
            "network",
            "intact",
            "one block deleted: mean",
            "largest",
            "at a stage change",
            "k blocks deleted (mean)",
        ],
        rows,
    )
    chance = 1 - 1 / int(source.num_classes)
    data = {
        "depth": depth,
        "chance_error": chance,
        "sources": origins,
        "lesions": [r.to_dict() for r in results],
    }
    text = _lesion_text(res, plain, depth, chance, len(x))
    caption = (
        f"Left: test error of ResNet-{depth} (blue) and plain-{depth} (red) with one block "
        "deleted (grey bands: the stage changes; x: cannot be deleted). Right: error against "
        "the number of blocks deleted at random inside the stages (mean, and min–max over "
        "the sets)."
    )
    return ReportSection("Lesion study", text + table, [(caption, png_bytes(fig))], data)


def _lesion_text(res: Lesion, plain: Lesion, depth: int, chance: float, n: int) -> str:
    ps = plain.summary()
    intro = (
        f"<p>Veit et al. (2016) delete one block of a trained network at test time. In "
        f"ResNet-{depth} a deleted block becomes its shortcut (<code>y = ReLU(shortcut(x))"
        f"</code>); in plain-{depth} the block is replaced by the identity, which is possible "
        f"for every block but the {len(ps['not_deletable'])} that change the shape. Test error "
        f"over {n} test examples (chance: {100 * chance:.0f}%).</p>"
    )
    inner_r = [b for b in res.blocks if not b.stage_change and b.error is not None]
    inner_p = [b for b in plain.blocks if not b.stage_change and b.error is not None]
    if not inner_r or not inner_p:
        return intro
    rise_r = sorted(b.error - res.error for b in inner_r if b.error is not None)
    rise_p = sorted(b.error - plain.error for b in inner_p if b.error is not None)
    med_r, med_p = statistics.median(rise_r), statistics.median(rise_p)
    cheap = sum(r < 0.05 for r in rise_r)
    worst = max(inner_r, key=lambda b: b.error or 0.0)
    broken = sum((b.error or 0.0) >= 0.8 * chance for b in inner_p)
    said = (
        f"<p><b>In this run:</b> ResNet-{depth} has {_pct(res.error)} error intact; deleting "
        f"one block inside a stage raises it by a median of {_pp(med_r)}, and {cheap} of "
        f"{len(rise_r)} blocks cost less than 5 points (the costliest, {worst.name}, "
        f"{_pp((worst.error or 0.0) - res.error)}). Plain-{depth} has {_pct(plain.error)} "
        f"intact; one block deleted raises it by a median of {_pp(med_p)}, and {broken} of "
        f"{len(rise_p)} single deletions leave it at {100 * 0.8 * chance:.0f}% error or more "
        "(near chance). "
    )
    said += (
        "As Veit et al. found, most single blocks of the residual net can go, while the plain "
        "net needs every layer. "
        if med_r < med_p and cheap > len(rise_r) / 2
        else "The residual net is not clearly more robust to single deletions here. "
    )
    st = res.summary()["stage_change"]
    if st is not None:
        more = st["mean_increase"] > med_r + 0.01  # a point more than the median block
        said += (
            f"Deleting a stage-changing block (its shortcut subsamples and zero-pads) costs "
            f"ResNet-{depth} {_pp(st['mean_increase'])} on average: "
            + (
                "more than a typical block, as in the paper. "
                if more
                else "about as little as a typical block (Veit et al. found the downsampling "
                "blocks costlier). "
            )
        )
    curve = res.by_k()
    means = [v["mean"] for v in curve.values()]
    kmax = max(curve)
    rising = all(b >= a for a, b in itertools.pairwise(means))
    said += (
        f"With {kmax} random blocks deleted its error is {_pct(curve[kmax]['mean'])} on "
        f"average ({_pct(curve[kmax]['min'])}–{_pct(curve[kmax]['max'])} over "
        f"{int(curve[kmax]['n'])} sets)"
        + (
            ", rising steadily with the number deleted."
            if rising
            else "; with this few sets the mean does not rise steadily with the number deleted."
        )
        + "</p>"
    )
    return intro + said


# ------------------------------------------------------------------------------ shattering


def shattering_section(
    source: ModelSource,
    *,
    depths: Sequence[int] = (20, 56),
    lines: int = 4,
    points: int = 128,
    radius: float = 0.5,
) -> ReportSection:
    """Balduzzi et al.'s gradient correlation of the plain and residual nets of every depth at
    initialization, and of the trained deepest pair when the demo has trained it."""
    x, _ = source.train_batch(lines)
    keys = [(d, s) for d in sorted(depths) for s in (False, True)]
    colors = twin_colors(depths)
    init: list[Shattering] = []
    for d, s in keys:
        model = source.initial(d, s)
        init.append(_shatter(model, x, points, radius, source.seed, net_label(d, s)))
    deep = max(depths)
    trained: list[Shattering] = []
    origins: list[str] = []
    for s in (False, True):
        have = source.weights(deep, s)
        if have is not None:
            model, origin = source.trained(deep, s)
            origins.append(origin)
            trained.append(_shatter(model, x, points, radius, source.seed, net_label(deep, s)))
    images = [
        (
            "At initialization: correlation of the input gradients of two inputs against their "
            "distance (dashed = plain, solid = residual; darker = deeper).",
            png_bytes(plot_shattering(init, colors=[colors[k] for k in keys])),
        )
    ]
    if len(trained) == 2:
        images.append(
            (
                f"After training: the same for plain-{deep} and ResNet-{deep}.",
                png_bytes(
                    plot_shattering(trained, colors=[colors[(deep, False)], colors[(deep, True)]])
                ),
            )
        )
    rows = [
        [
            r.name,
            "init" if i < len(init) else "trained",
            f"{r.at(1):.3f}",
            f"{r.at(min(8, len(r.correlation) - 1)):.3f}",
            "—" if r.decay_lag() is None else f"{r.offsets[r.decay_lag() or 0]:.3f}",
        ]
        for i, r in enumerate([*init, *trained])
    ]
    step = init[0].offsets[1]
    table = html_table(
        [
            "network",
            "weights",
            f"r at distance {step:.3f}",
            f"r at {8 * step:.3f}",
            "distance where r < 0.5",
        ],
        rows,
    )
    data = {
        "lines": int(x.shape[0]),
        "points": points,
        "radius": radius,
        "init": [r.to_dict() for r in init],
        "trained": [r.to_dict() for r in trained],
        "trained_sources": origins,
    }
    text = _shattering_text(init, trained, deep, step)
    return ReportSection("Shattered gradients", text + table, images, data)


def _shatter(
    model: nn.Module, x: torch.Tensor, points: int, radius: float, seed: int, name: str
) -> Shattering:
    return shattering(model, x, points=points, radius=radius, seed=seed, name=name)


def _shattering_text(
    init: list[Shattering], trained: list[Shattering], deep: int, step: float
) -> str:
    by = {r.name: r for r in init}
    p, r = by[f"plain-{deep}"], by[f"ResNet-{deep}"]
    intro = (
        "<p>Balduzzi et al. (2017) take the gradient of a network's output with respect to its "
        "input along a line of nearby inputs: in deep plain nets the gradients of neighbouring "
        'inputs are almost unrelated (they look like white noise, "shattered"), with skips '
        f"they stay alike. Plotted is the correlation of two gradients against the distance "
        f"of their inputs (a fraction of the input's norm; {init[0].lines} lines of "
        f"{init[0].points} points around training examples; eval mode, so at initialization "
        "batch norm passes its input through).</p>"
    )
    half_p, half_r = p.decay_lag(), r.decay_lag()

    def reach(h: int | None, s: Shattering) -> str:
        return (
            f"falls below 0.5 at distance {s.offsets[h]:.3f}"
            if h is not None
            else f"stays above 0.5 up to {s.offsets[-1]:.3f}"
        )

    said = (
        f"<p><b>In this run</b>, at initialization, two inputs {step:.3f} apart have gradient "
        f"correlation {p.at(1):.2f} in plain-{deep} and {r.at(1):.2f} in ResNet-{deep}; the "
        f"correlation {reach(half_p, p)} in the plain net and {reach(half_r, r)} in the "
        "residual one. "
    )
    plains = sorted((s for s in init if s.name.startswith("plain")), key=lambda s: -s.at(1))
    if len(plains) > 1:
        falls = [s.name for s in plains] == sorted(
            (s.name for s in plains), key=lambda n: int(n.split("-")[1])
        )
        said += (
            "The deeper the plain net, the faster its gradients decorrelate. "
            if falls
            else "In the plain nets the decay does not grow with depth here. "
        )
    if len(trained) == 2:
        tp, tr = trained
        said += (
            f"After training: {tp.at(1):.2f} (plain-{deep}) and {tr.at(1):.2f} "
            f"(ResNet-{deep}) at the same distance"
            + (
                ", the residual net's gradients still the smoother."
                if tr.at(1) > tp.at(1)
                else "; training has removed the difference."
            )
        )
    return intro + said + "</p>"
