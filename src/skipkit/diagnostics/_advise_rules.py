"""The rules of :func:`~skipkit.diagnostics.advise`: the findings on the measured chain
(gradient decay or growth, rank collapse, downsampling bottlenecks) and the skips they lead to.

Separate from :mod:`skipkit.diagnostics.advise`, which measures the model, runs these rules
and applies their :class:`Suggestion` records with :func:`skipkit.add_skip`: a rule reads
``_Unit`` records only, so it can be read (and changed) without the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from skipkit.diagnostics._advise_chain import _stages, _Unit

__all__ = ["Suggestion"]


@dataclass
class Suggestion:
    """One proposed skip, in the terms of :func:`skipkit.add_skip`.

    Attributes:
        src: the module whose output is tapped (a path of ``model.named_modules()``).
        dst: the module whose output the skip joins (``merge(shortcut(src_out), dst_out)``).
        merge: ``"add"`` (residual) or ``"concat"`` (U-Net).
        shortcut: ``"auto"``: identity when the shapes agree, else a planned projection.
        reason: why, in words, with the measured numbers.
        score: how much the skip is needed: the decades of gradient-signal change across the
            layers it bridges, plus the share of effective rank they lose (and, for long
            skips, log2 of the resolution lost). Larger is more urgent.
        layers: depths (1-based, as in :class:`~skipkit.diagnostics.GradientFlow`) of the
            first and last weight layer the skip goes around.
    """

    src: str
    dst: str
    merge: str = "add"
    shortcut: str = "auto"
    reason: str = ""
    score: float = 0.0
    layers: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


def _gradient_spans(
    units: list[_Unit], *, min_decades: float, min_rate: float
) -> list[tuple[int, int, str]]:
    """Spans ``(first, last, description)`` of units across which the signal changes by at
    least ``min_decades``, found as maximum-sum runs of per-layer changes beyond ``min_rate``."""
    idx = [k for k, u in enumerate(units) if math.isfinite(u.signal)]
    if len(idx) < 3:
        return []
    found: list[tuple[int, int, str]] = []
    free = [(0, len(idx) - 1)]  # ranges of positions in idx still to search
    while free:
        lo, hi = free.pop()
        if hi - lo < 2:
            continue
        best: tuple[float, int, int, int] | None = None
        for sign in (1, -1):  # +1: grows towards the input (exploding), -1: vanishing
            run, start = 0.0, lo
            for p in range(lo, hi):
                step = sign * (units[idx[p]].signal - units[idx[p + 1]].signal) - min_rate
                if run <= 0:
                    run, start = step, p
                else:
                    run += step
                if best is None or run > best[0]:
                    best = (run, start, p + 1, sign)
        if best is None or best[0] <= 0:
            continue
        _, a, b, sign = best
        ua, ub = units[idx[a]], units[idx[b]]
        change = abs(ua.signal - ub.signal)
        if change < min_decades:
            continue
        rate = change / max(ub.depth - ua.depth, 1)
        how = (
            "grows {x} towards the input (exploding gradients, as batch norm causes in deep "
            "plain nets)"
            if sign > 0
            else "shrinks {x} towards the input (vanishing gradients)"
        ).format(x=f"{10**change:.3g}×")
        found.append(
            (
                idx[a],
                idx[b],
                f"the gradient signal ‖∂L/∂W‖·‖W‖ {how} across layers {ua.depth}–{ub.depth} "
                f"({rate:.3f} decades per layer)",
            )
        )
        free += [(lo, a), (b, hi)]
    return found


def _rank_collapse(
    units: list[_Unit], *, rank_drop: float, batch: int
) -> list[tuple[int, int, str]]:
    """The span from the highest effective rank to the worst collapse below ``rank_drop``.

    Ranks are compared as fractions of the most a layer can have (``min(N, D)``), and only
    inside the trunk (stages of two or more layers): a classifier's 10 logits are no collapse.
    """
    trunk = [k for st in _stages(units) if len(st) > 1 for k in st]
    best_k, best_r = -1, 0.0
    worst: tuple[float, int, int] | None = None
    for k in trunk:
        u = units[k]
        if u.rank is None or not math.isfinite(u.rank) or batch < 8:
            continue
        r = u.rank / max(min(batch, math.prod(u.out_shape[1:])), 1)
        if best_k >= 0 and r < rank_drop * best_r:
            frac = r / best_r
            if worst is None or frac < worst[0]:
                worst = (frac, best_k, k)
        if r > best_r:
            best_k, best_r = k, r
    if worst is None:
        return []
    frac, a, b = worst
    ua, ub = units[a], units[b]
    return [
        (
            a,
            b,
            f"the effective rank of the activations collapses from {ua.rank:.1f} at layer "
            f"{ua.depth} to {ub.rank:.1f} at layer {ub.depth} ({frac:.0%} of the share it "
            "had): the examples' representations merge",
        )
    ]


def _tile(units: list[_Unit], bad: dict[int, str], *, block: int) -> list[Suggestion]:
    """Residual skips around ``block`` layers each, over every stage that touches ``bad``."""
    tips: list[Suggestion] = []
    for stage in _stages(units):
        if not any(k in bad for k in stage):
            continue
        while stage and units[stage[0]].src is None:
            stage = stage[1:]  # the stem: fed by the model input, which no module outputs
        head = len(units) - 1
        if stage and stage[-1] == head and units[head].in_shape[1:] != units[head].out_shape[1:]:
            stage = stage[:-1]  # the classifier head maps features to outputs: no skip around it
        if len(stage) < 2:
            continue
        groups = [stage[i : i + block] for i in range(0, len(stage), block)]
        if len(groups) > 1 and len(groups[-1]) < block and block > 1:
            groups[-2] += groups.pop()  # no lone one-layer skip at the end of a stage
        why = next(bad[k] for k in stage if k in bad)
        for g in groups:
            first, last = units[g[0]], units[g[-1]]
            if first.src is None or last.dst is None or first.src_shape is None:
                continue
            if last.dst_shape is None or len(first.src_shape) != len(last.dst_shape):
                continue
            after = units[g[-1] + 1].signal if g[-1] + 1 < len(units) else last.signal
            change = abs(first.signal - after) if math.isfinite(first.signal + after) else 0.0
            rank_loss = 0.0
            if first.rank and last.rank:
                rank_loss = max(0.0, 1.0 - last.rank / first.rank)
            paths = f"{first.path} … {last.path}" if len(g) > 1 else first.path
            text = (
                f"{why}; a skip from {first.src} to {last.dst} gives the signal a path "
                f"around layers {first.depth}–{last.depth} ({paths})"
            )
            if first.src_shape != last.dst_shape:
                text += (
                    f"; the shape changes from {_shape(first.src_shape[1:])} to "
                    f"{_shape(last.dst_shape[1:])}, so the shortcut projects (1×1 conv + BN"
                    f"{', strided' if first.downsamples else ''})"
                )
            tips.append(
                Suggestion(
                    src=first.src,
                    dst=last.dst,
                    merge="add",
                    reason=text,
                    score=round(change + rank_loss, 4),
                    layers=(first.depth, last.depth),
                )
            )
    return tips


def _long_skips(units: list[_Unit]) -> list[Suggestion]:
    """U-Net skips: from the input of the last layer that squeezed the map below a
    resolution to the first layer that brings the map back to it."""
    tips: list[Suggestion] = []
    for k, u in enumerate(units):
        if not u.upsamples or u.dst is None or u.dst_shape is None:
            continue
        target = u.dst_shape[2:]
        donors = [
            j
            for j in range(k)
            if units[j].downsamples
            and units[j].src is not None
            and (units[j].src_shape or ())[2:] == target
        ]
        if not donors:
            continue
        donor = units[donors[-1]]
        assert donor.src is not None
        smallest = min(math.prod(units[j].out_shape[2:]) for j in range(donors[-1], k))
        ratio = math.prod(target) / max(smallest, 1)
        tips.append(
            Suggestion(
                src=donor.src,
                dst=u.dst,
                merge="concat",
                reason=(
                    f"a downsampling bottleneck: the map shrinks {ratio:.3g}× in size after "
                    f"{donor.src} (before layer {donor.depth}) and is expanded back to size "
                    f"{'×'.join(map(str, target))} at layer {u.depth} ({u.path}); a long skip "
                    "brings the "
                    "full-resolution features straight across (U-Net, merged by concatenation)"
                ),
                score=round(math.log2(max(ratio, 1.0)), 4),
                layers=(donor.depth, u.depth),
            )
        )
    return tips


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
