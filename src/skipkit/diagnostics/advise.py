"""Where a skip belongs: a placement advisor built on gradient flow and activation statistics.

One forward/backward pass over a batch (see :func:`~skipkit.diagnostics.gradient_flow`) gives,
per main-path weight layer ``l`` (depth order), the **gradient signal**

    s_l = log10(‖∂L/∂W_l‖ · ‖W_l‖)

which, unlike ``‖∂L/∂W_l‖`` alone, does not change when a layer followed by normalization
rescales its weights; it measures how strongly the loss pulls on the layer *relative to its
size*. In a healthy net it stays within a decade or so across depth. Three findings lead to
suggestions:

1. **Gradient decay or growth across a span.** The span of consecutive layers over which
   ``s`` changes fastest (a maximum-sum run of per-layer changes beyond ``min_rate`` decades)
   is unhealthy when ``s`` changes by ``min_decades`` or more across it: vanishing gradients
   (``s`` falls towards the input; deep nets without normalization) or exploding ones (``s``
   rises towards the input; batch norm in deep plain nets, Yang et al. 2019).
2. **Rank collapse.** The effective rank of the per-example outputs (``(N, D)`` matrix) falls
   below ``rank_drop`` times its earlier maximum: the examples' representations merge.
3. **Downsampling bottlenecks.** A map squeezed (stride, pooling) and later expanded back
   (transposed conv, upsampling) loses detail on the way: a long skip from before the squeeze
   to the matching resolution after it, merged by concatenation (U-Net).

For (1) and (2) the *stages* of the main path that the unhealthy spans touch (runs of layers
joined by parameter-free modules, a new stage at every downsampling layer) are tiled with
residual skips around ``block`` layers each (He et al.'s basic block: two), from the tensor
that feeds the block's first layer to the normalization after its last layer (the sum comes
before the activation, as in ResNets). A block that changes the shape gets ``shortcut="auto"``,
which :func:`skipkit.add_skip` turns into a strided 1×1 conv + BN.

    >>> tips = advise(plain_net, (x, y), nn.CrossEntropyLoss())
    >>> for t in tips: print(t.src, "->", t.dst, t.reason)
    >>> net = apply(plain_net, tips, example=x)       # a skipkit.surgery.Grafted wrapper
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from skipkit.diagnostics._probe import Batch, Probe, Trace, is_norm_layer, is_weight_layer
from skipkit.diagnostics.gradflow import GradientFlow, measure
from skipkit.surgery import SurgeryModule, add_skip

log = logging.getLogger(__name__)

__all__ = ["Suggestion", "advise", "advise_with_flow", "apply"]

LossFn = Callable[..., torch.Tensor]


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


@dataclass
class _Unit:
    """A main-path weight layer with the taps around it."""

    call: Trace
    depth: int
    in_id: int | None
    out_id: int | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    src: str | None  # a module run once whose output is this layer's input
    src_shape: tuple[int, ...] | None
    dst: str | None  # the norm after this layer (or the layer itself), run once
    dst_shape: tuple[int, ...] | None
    signal: float
    rank: float | None
    linked: bool = False  # fed by the previous unit through parameter-free modules

    @property
    def path(self) -> str:
        return self.call.path

    @property
    def downsamples(self) -> bool:
        a, b = self.in_shape, self.out_shape
        return len(a) == len(b) > 2 and any(o < i for i, o in zip(a[2:], b[2:], strict=True))

    @property
    def upsamples(self) -> bool:
        a, b = self.in_shape, self.out_shape
        return len(a) == len(b) > 2 and any(o > i for i, o in zip(a[2:], b[2:], strict=True))


def advise(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    block: int = 2,
    min_decades: float = 1.5,
    min_rate: float = 0.02,
    rank_drop: float = 0.5,
    max_suggestions: int | None = None,
) -> list[Suggestion]:
    """Propose skips for ``model`` from one measured forward/backward pass.

    Args:
        model: the network (left unchanged: see :func:`~skipkit.diagnostics.gradient_flow`).
        batch: ``(x, y)`` or ``x`` as in :func:`~skipkit.diagnostics.gradient_flow`; use a
            real batch of a few dozen examples or more (the ranks need examples).
        loss_fn: the training loss, e.g. ``nn.CrossEntropyLoss()``.
        block: weight layers per residual skip.
        min_decades: the gradient-signal change (in powers of ten) across a span that makes
            it unhealthy.
        min_rate: per-layer change (decades) below which a layer does not extend a span.
        rank_drop: a layer whose effective rank is below this fraction of the largest rank
            before it marks a collapse.
        max_suggestions: keep only the highest-scoring ones.

    Returns:
        Suggestions in forward order (empty for a healthy model).
    """
    tips, _ = advise_with_flow(
        model,
        batch,
        loss_fn,
        block=block,
        min_decades=min_decades,
        min_rate=min_rate,
        rank_drop=rank_drop,
        max_suggestions=max_suggestions,
    )
    return tips


def advise_with_flow(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    block: int = 2,
    min_decades: float = 1.5,
    min_rate: float = 0.02,
    rank_drop: float = 0.5,
    max_suggestions: int | None = None,
) -> tuple[list[Suggestion], GradientFlow]:
    """:func:`advise`, also returning the :class:`GradientFlow` it was based on."""
    if block < 1:
        raise ValueError(f"advise(block={block}) needs block >= 1")
    if min_decades <= 0 or min_rate < 0 or not 0 < rank_drop < 1:
        raise ValueError("advise needs min_decades > 0, min_rate >= 0 and 0 < rank_drop < 1")
    flow, probe = measure(model, batch, loss_fn, train=True, ranks=True, trace=True, name=None)
    units = _units(probe, flow)
    prefix = _host_prefix(model)
    tips: list[Suggestion] = []
    bad: dict[int, str] = {}
    for a, b, text in _gradient_spans(units, min_decades=min_decades, min_rate=min_rate):
        for k in range(a, b + 1):
            bad.setdefault(k, text)
    for a, b, text in _rank_collapse(units, rank_drop=rank_drop, batch=_batch_size(batch)):
        for k in range(a, b + 1):
            bad.setdefault(k, text)
    if bad:
        tips += _tile(units, bad, block=block)
    tips += _long_skips(units)
    for t in tips:
        t.src, t.dst = _strip(t.src, prefix), _strip(t.dst, prefix)
    if max_suggestions is not None and len(tips) > max_suggestions:
        keep = sorted(tips, key=lambda t: -t.score)[:max_suggestions]
        tips = [t for t in tips if t in keep]
    log.info("advise: %d suggestion(s) for %s", len(tips), type(model).__name__)
    return tips, flow


def apply(
    model: nn.Module,
    suggestions: Sequence[Suggestion],
    example: Any,
    *,
    zero_init: bool = False,
) -> nn.Module:
    """Add the suggested skips with :func:`skipkit.add_skip`.

    Args:
        model: the model the suggestions were made for (not modified).
        suggestions: from :func:`advise`.
        example: an input for ``model`` (shapes and order are checked with it).
        zero_init: start every new skip at zero, so a *trained* model computes exactly its old
            function at step 0. Off by default: the advice is for a model about to be trained,
            and a zero skip carries no gradient until its gain has grown.

    Returns:
        A :class:`skipkit.surgery.Grafted` wrapper (``model`` itself when there is nothing to
        add).
    """
    net = model
    for s in suggestions:
        net = add_skip(
            net,
            s.src,
            s.dst,
            merge=s.merge,
            shortcut=s.shortcut,
            example=example,
            zero_init=zero_init,
        )
    return net


# ------------------------------------------------------------------------------- the chain


def _units(probe: Probe, flow: GradientFlow) -> list[_Unit]:
    """The main-path weight layers in forward order, with their taps and signals."""
    alias = probe.alias

    def rid(i: int) -> int:
        return alias.get(i, i)

    counts: dict[int, int] = {}
    for c in probe.calls:
        counts[id(c.module)] = counts.get(id(c.module), 0) + 1
    producers: dict[int, list[Trace]] = {}
    consumers: dict[int, list[Trace]] = {}
    for c in probe.calls:
        if c.output is not None:
            producers.setdefault(rid(c.output), []).append(c)
        if c.leaf:
            for i in c.inputs:
                consumers.setdefault(rid(i), []).append(c)
    by_path = {layer.path: layer for layer in flow.layers}

    def usable(c: Trace) -> bool:
        return c.path != "" and counts[id(c.module)] == 1 and id(c.module) not in probe.skip_parts

    units: list[_Unit] = []
    seen: set[int] = set()
    for c in probe.calls:
        m = c.module
        if not is_weight_layer(m) or id(m) in probe.skip_parts or id(m) in seen:
            continue
        seen.add(id(m))
        layer = by_path.get(c.path)
        if layer is None or not c.inputs or c.out_shape is None:
            continue
        in_id = rid(c.inputs[0])
        out_id = rid(c.output) if c.output is not None else None
        taps = [p for p in producers.get(in_id, []) if p.order < c.order and usable(p)]
        src = max(taps, key=lambda p: p.order) if taps else None
        dst: Trace | None = c if usable(c) else None
        for n in consumers.get(out_id, []) if out_id is not None else []:
            if n.order > c.order and is_norm_layer(n.module):
                dst = n if usable(n) else dst
                break
        product = layer.weight_grad_norm * layer.weight_norm
        units.append(
            _Unit(
                call=c,
                depth=layer.depth,
                in_id=in_id,
                out_id=out_id,
                in_shape=c.in_shapes[0],
                out_shape=c.out_shape,
                src=src.path if src else None,
                src_shape=src.out_shape if src else None,
                dst=dst.path if dst else None,
                dst_shape=dst.out_shape if dst else None,
                signal=math.log10(product) if product > 0 else math.nan,
                rank=layer.effective_rank,
            )
        )
    for prev, unit in itertools.pairwise(units):
        unit.linked = _linked(prev, unit, consumers, rid)
    return units


def _linked(
    prev: _Unit, unit: _Unit, consumers: dict[int, list[Trace]], rid: Callable[[int], int]
) -> bool:
    """Whether ``unit``'s input comes from ``prev``'s output through parameter-free leaf
    modules (norms, activations, pooling, merges) only."""
    if prev.out_id is None or unit.in_id is None:
        return False
    frontier, seen = [prev.out_id], {prev.out_id}
    for _ in range(32):
        if unit.in_id in seen:
            return True
        nxt = []
        for t in frontier:
            for c in consumers.get(t, []):
                if c.order <= prev.call.order or c.order >= unit.call.order or c.output is None:
                    continue
                if is_weight_layer(c.module):
                    continue
                o = rid(c.output)
                if o not in seen:
                    seen.add(o)
                    nxt.append(o)
        if not nxt:
            break
        frontier = nxt
    return unit.in_id in seen


def _stages(units: list[_Unit]) -> list[list[int]]:
    """Runs of linked units of one rank; a downsampling layer starts a new run."""
    stages: list[list[int]] = []
    for k, u in enumerate(units):
        new = (
            not stages
            or not u.linked
            or u.downsamples
            or len(u.out_shape) != len(units[k - 1].out_shape)
        )
        if new:
            stages.append([k])
        else:
            stages[-1].append(k)
    return stages


# ------------------------------------------------------------------------------- findings


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
                    shortcut="auto",
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
                shortcut="auto",
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


# ------------------------------------------------------------------------------- helpers


def _batch_size(batch: Batch) -> int:
    x = batch if isinstance(batch, torch.Tensor) else batch[0]
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 0


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _host_prefix(model: nn.Module) -> str:
    """Paths of a surgery wrapper's suggestions are relative to the model it wraps."""
    if isinstance(model, SurgeryModule):
        host = model.host()
        for name, m in model.named_modules():
            if m is host:
                return name
    return ""


def _strip(path: str, prefix: str) -> str:
    if prefix and path.startswith(prefix + "."):
        return path[len(prefix) + 1 :]
    return path
