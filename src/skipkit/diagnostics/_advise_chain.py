"""The measured chain of :func:`~skipkit.diagnostics.advise`: the main-path weight layers in
forward order, each with the module output it could be skipped from and the one it could
join, and its gradient signal and effective rank.

Separate from the rules (:mod:`skipkit.diagnostics._advise_rules`) that read it: this part
turns one traced forward/backward pass into :class:`_Unit` records and knows nothing of
suggestions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from skipkit.diagnostics._probe import Probe, Trace, is_norm_layer, is_weight_layer
from skipkit.diagnostics.gradflow import GradientFlow


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
