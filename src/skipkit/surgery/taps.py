"""Reading intermediate outputs: :func:`taps`.

Submodule outputs are caught with forward hooks, so any model works, fx-traceable or not.
Names that are not submodules (``"layer1.0.add"``, ``"flatten"``: the operations in a
``forward``) are found by tracing the model with :mod:`torch.fx` and naming each operation
``"<enclosing module path>.<op>"`` (``_1``, ``_2`` … for repeats), which needs a model fx
can trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx
from torch import nn

from skipkit.surgery._fx import ScopeTracer
from skipkit.surgery._paths import module_paths, show, unknown_path_error
from skipkit.surgery.wrapper import SurgeryModule


def _snapshot(value: Any) -> Any:
    # A later inplace=True layer would otherwise change what we return (VGG's conv → ReLU).
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple | list) and not hasattr(value, "_fields"):
        return type(value)(_snapshot(v) for v in value)
    return value


def taps(
    model: nn.Module, names: str | Iterable[str], *args: Any, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """Run ``model(*args, **kwargs)`` once; return its output and the named intermediates.

    Example::

        out, feats = taps(resnet, ["layer1", "layer3", "layer1.0.add"], x)
        feats["layer1"].shape       # (N, 64, H/4, W/4)

    Gradients flow through the returned tensors (they are copies taken when the module ran,
    so later in-place layers do not change them). Model modes are left alone.

    Args:
        model: any module; for a wrapper from :func:`skipkit.add_skip` /
            :func:`skipkit.connect` the names are those of the wrapped model(s).
        names: submodule paths (hooks), or operation names from torch.fx tracing.
        *args: the model's positional input.
        **kwargs: the model's keyword input.

    Returns:
        ``(output, {name: tensor})`` (a submodule returning a tuple gives the tuple).

    Raises:
        ValueError: an unknown name (with close matches), a module that ran more than once
            or not at all, or an operation name on a model fx cannot trace.
    """
    wanted = [names] if isinstance(names, str) else list(names)
    if not wanted:
        raise ValueError("taps needs at least one name")
    host = model.host() if isinstance(model, SurgeryModule) else model
    modules = module_paths(host)
    ops = [n for n in wanted if n not in modules]
    if ops:
        return _fx_taps(model, wanted, ops, args, kwargs)

    got: dict[str, list[Any]] = {n: [] for n in wanted}
    handles = []
    try:
        for n in dict.fromkeys(wanted):
            handles.append(
                modules[n].register_forward_hook(
                    lambda m, a, out, n=n: got[n].append(_snapshot(out))
                )
            )
        output = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return output, {n: _one(n, got[n]) for n in wanted}


def _one(name: str, values: list[Any]) -> Any:
    if len(values) == 1:
        return values[0]
    if not values:
        raise ValueError(
            f"taps: {show(name)} did not run for this input. Fix: tap a module the forward "
            "pass calls"
        )
    raise ValueError(
        f"taps: {show(name)} ran {len(values)} times in one forward pass (a shared or "
        "repeated module), so it has no single output. Fix: tap its parent, or give each use "
        "its own instance"
    )


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, wanted: dict[torch.fx.Node, list[str]]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        for name in self.wanted.get(n, ()):
            self.values[name] = _snapshot(out)
        return out


def _fx_taps(
    model: nn.Module,
    wanted: list[str],
    ops: list[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    hooked = [
        n or "<root>"
        for n, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or isinstance(m, SurgeryModule)
    ]
    if hooked:
        host = model.host() if isinstance(model, SurgeryModule) else model
        unknown = unknown_path_error(ops[0], host, what="tap")
        raise ValueError(
            f"{unknown} Operation names need torch.fx tracing, which would bypass the forward "
            f"hooks on {hooked[:3]} (skips added with add_skip use them): tap submodules"
        )
    if kwargs:
        raise ValueError("taps with operation names (torch.fx) takes positional inputs only")
    tracer = ScopeTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # tracing runs arbitrary user code; any failure means "untraceable"
        raise ValueError(
            f"taps: {ops[0]!r} is not a submodule of {type(model).__name__}, and torch.fx "
            f"cannot trace the model to find an operation of that name ({type(e).__name__}: "
            f"{e}). Fix: tap submodules (forward hooks work on any model)"
        ) from e
    nodes: dict[torch.fx.Node, list[str]] = {}
    for n in wanted:
        if n in ops:
            if n not in tracer.qualnames:
                raise unknown_path_error(n, model, what="tap", extra=tracer.qualnames)
            nodes.setdefault(tracer.qualnames[n], []).append(n)
            continue
        outs = tracer.module_outputs.get(n, [])
        _one(n, outs)  # raises unless the module ran exactly once
        if not isinstance(outs[0], torch.fx.Proxy):
            raise ValueError(
                f"taps: submodule {n!r} returns {type(outs[0]).__name__} under torch.fx; "
                "with operation names, tap submodules that return one tensor"
            )
        nodes.setdefault(outs[0].node, []).append(n)
    gm = torch.fx.GraphModule(model, graph)
    rec = _Recorder(gm, nodes)
    output = rec.run(*args)
    return output, {n: rec.values[n] for n in wanted}
