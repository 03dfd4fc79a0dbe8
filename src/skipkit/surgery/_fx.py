"""torch.fx operation names (``"layer1.0.add"``): the tracer :func:`skipkit.taps` reads them
with, here apart from :mod:`skipkit.surgery.taps` so the checks in
:mod:`skipkit.surgery._api` can name them without importing the wrapper that taps imports.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
import torch.fx
from torch import nn


def operation_names(model: nn.Module) -> list[str]:
    """The torch.fx operation names :func:`taps` accepts for ``model``; none if fx cannot trace
    it (only used to explain a wrong name, so a failed trace is not an error here)."""
    tracer = ScopeTracer()
    try:
        tracer.trace(model)
    except Exception:  # tracing runs arbitrary user code
        return []
    return list(tracer.qualnames)


class ScopeTracer(torch.fx.Tracer):
    """An fx tracer naming each operation after the module whose forward contains it, and
    noting which node holds each module's output (leaf or not)."""

    def __init__(self) -> None:
        super().__init__()
        self._where = ""
        self.qualnames: dict[str, torch.fx.Node] = {}
        self.module_outputs: dict[str, list[Any]] = {}
        self._counts: collections.Counter[str] = collections.Counter()

    def call_module(
        self,
        m: nn.Module,
        forward: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        path = self.path_of_module(m)
        outer, self._where = self._where, path
        try:
            out = super().call_module(m, forward, args, kwargs)
        finally:
            self._where = outer
        self.module_outputs.setdefault(path, []).append(out)
        return out

    def create_node(self, kind: str, target: Any, *rest: Any, **kw: Any) -> torch.fx.Node:
        node = super().create_node(kind, target, *rest, **kw)
        if kind in ("call_function", "call_method"):
            op = target if isinstance(target, str) else getattr(target, "__name__", "op")
            base = f"{self._where}.{op}" if self._where else op
            k = self._counts[base]
            self._counts[base] += 1
            self.qualnames[base if k == 0 else f"{base}_{k}"] = node
        return node


__all__ = ["ScopeTracer", "operation_names"]
