"""The hooks behind :func:`~skipkit.diagnostics.gradient_flow` and
:func:`~skipkit.diagnostics.advise`: one forward/backward pass, observed.

:class:`Probe` records, while armed and autograd is on, per weight layer its output norms and
output-gradient norms, the response after the next norm layer, optionally the effective rank,
per skip the branch/shortcut balance, and optionally a trace of every module call (which
tensors went in and came out) from which the advisor finds the main path and its taps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from skipkit.skips import PendingShortcut, SkipModule

Batch = torch.Tensor | Sequence[Any]


# ------------------------------------------------------------------------------ layer kinds


def is_weight_layer(module: nn.Module) -> bool:
    """A module that owns a parameter of two or more dims (conv, linear, embedding, …)."""
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def is_norm_layer(module: nn.Module) -> bool:
    """BatchNorm / InstanceNorm / GroupNorm / LayerNorm / RMSNorm."""
    return isinstance(module, _NORM_TYPES)


def shortcut_of(m: nn.Module) -> nn.Module | None:
    """The shortcut module of a skip (its protocol part; ``nn.Identity`` for the identity),
    or ``None`` for a module that is no skip."""
    return m.shortcut if isinstance(m, SkipModule) else None


def norm(t: torch.Tensor) -> float:
    """``‖t‖₂`` over all elements, as a float (no autograd)."""
    return float(torch.linalg.vector_norm(t.detach().float()))


def effective_rank(a: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p = σ / Σσ`` over the singular values of ``a.flatten(1)``.

    ``a``: ``(N, *F)``, one row per example. Between 1 (all rows on one line) and
    ``min(N, prod(F))``.
    """
    m = a.detach().float().flatten(1)
    if m.shape[0] < 2 or m.shape[1] < 1:
        return 1.0
    s = torch.linalg.svdvals(m)
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# ---------------------------------------------------------------------------------- probing


@dataclass
class LayerAcc:
    module: nn.Module
    path: str
    depth: int
    out_shape: tuple[int, ...]
    numel: int
    act_sq: float = 0.0
    grad_sq: float = 0.0
    response_std: float = math.nan
    effective_rank: float | None = None
    calls: int = 0
    grads_seen: int = 0


@dataclass
class SkipAcc:
    module: SkipModule
    path: str
    order: int
    depth: int = 0
    in_norm: float = 0.0
    out_norm: float = 0.0
    in_grad: float | None = None
    out_grad: float | None = None
    branch_norm: float | None = None
    shortcut_norm: float | None = None
    shortcut_grad_t: torch.Tensor | None = None
    branch_grad: float | None = None
    shortcut_grad: float | None = None
    two_inputs: bool = False


@dataclass
class Trace:
    """One module call, for the placement advisor: which tensors went in and came out."""

    path: str
    module: nn.Module
    order: int
    inputs: list[int]
    in_shapes: list[tuple[int, ...]]
    output: int | None
    out_shape: tuple[int, ...] | None
    leaf: bool


class Probe:
    """Hooks on a model that collect the numbers of :class:`GradientFlow` for one pass.

    The probe stays attached (for :class:`GradientFlowRecorder`) but only records while
    ``armed`` and autograd is on, so evaluation passes and unrecorded steps cost one branch per
    module call.
    """

    def __init__(self, model: nn.Module, *, ranks: bool = False, trace: bool = False) -> None:
        self.model = model
        self.ranks = ranks
        self.trace = trace
        self.armed = False
        self.handles: list[Any] = []
        self.hooked: set[int] = set()  # ids of the shortcut and merge modules with hooks
        self.paths = {id(m): name for name, m in model.named_modules()}
        self.skip_parts: set[int] = set()
        for m in model.modules():
            sc = shortcut_of(m)
            if sc is not None:
                self.skip_parts.update(id(s) for s in sc.modules())
        self.reset()
        self._attach()

    def reset(self) -> None:
        self.layers: dict[int, LayerAcc] = {}
        self.skips: dict[int, SkipAcc] = {}
        self.calls: list[Trace] = []
        self.keep: list[torch.Tensor] = []  # traced tensors stay alive so ids stay unique
        self.alias: dict[int, int] = {}  # id(view made by a hook) -> id(the tensor it views)
        self.last_layer: LayerAcc | None = None
        self.last_out: torch.Tensor | None = None
        self.depth = 0

    @property
    def recording(self) -> bool:
        return self.armed and torch.is_grad_enabled()

    # --- hooks ----------------------------------------------------------------------------

    def _attach(self) -> None:
        for m in self.model.modules():
            if id(m) in self.skip_parts:
                continue
            if is_weight_layer(m):
                self.handles.append(m.register_forward_hook(self._on_layer))
            elif is_norm_layer(m):
                self.handles.append(m.register_forward_hook(self._on_norm))
            if isinstance(m, SkipModule):
                self.handles.append(m.register_forward_pre_hook(self._on_skip_in))
                self.handles.append(m.register_forward_hook(self._on_skip_out))
                self._tap_parts(m)
        if self.trace:
            for m in self.model.modules():
                self.handles.append(m.register_forward_hook(self._on_any))

    def detach(self) -> None:
        """Remove every hook and wrapper; the model is as before."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.hooked.clear()

    def _on_layer(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not self.recording or not isinstance(out, torch.Tensor):
            return
        acc = self.layers.get(id(module))
        if acc is None:
            self.depth += 1
            acc = LayerAcc(
                module=module,
                path=self.paths.get(id(module), "?"),
                depth=self.depth,
                out_shape=tuple(out.shape),
                numel=out.numel(),
            )
            self.layers[id(module)] = acc
            if self.ranks and out.dim() >= 2:
                acc.effective_rank = effective_rank(out)
            acc.response_std = float(out.detach().float().std(unbiased=False))
        acc.calls += 1
        acc.act_sq += norm(out) ** 2
        self.last_layer, self.last_out = acc, out
        if out.requires_grad:
            out.register_hook(self._grad_sink(acc))

    def _grad_sink(self, acc: LayerAcc) -> Callable[[torch.Tensor], None]:
        def sink(g: torch.Tensor) -> None:
            acc.grad_sq += norm(g) ** 2
            acc.grads_seen += 1

        return sink

    def _on_norm(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        # He et al.'s Fig. 7 response: the norm output that directly follows a weight layer
        if not self.recording or not isinstance(out, torch.Tensor) or self.last_layer is None:
            return
        acc = self.last_layer
        # only a norm fed by the layer's own output (not e.g. a pre-activation block's norm)
        if acc.calls == 1 and args and args[0] is self.last_out:
            acc.response_std = float(out.detach().float().std(unbiased=False))
        self.last_layer, self.last_out = None, None

    def _on_skip_in(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not self.recording or not args or not isinstance(args[0], torch.Tensor):
            return None
        assert isinstance(module, SkipModule)
        self._tap_parts(module)  # a lazily planned shortcut exists from its first pass on
        x = args[0]
        acc = SkipAcc(
            module=module,
            path=self.paths.get(id(module), "?"),
            order=len(self.skips),
            depth=self.depth + 1,
            in_norm=norm(x),
        )
        self.skips[id(module)] = acc
        rest = args[1:]
        if len(args) > 1 and isinstance(args[1], torch.Tensor):
            # an added skip or long skip, forward(x, b): the branch is computed outside, so
            # its gradient is the one reaching b (x feeds the shortcut only)
            acc.two_inputs = True
            b = args[1]
            if b.requires_grad:
                bv = self._view(b)

                def branch_sink(g: torch.Tensor) -> None:
                    acc.branch_grad = norm(g) if module.skip_enabled else None

                bv.register_hook(branch_sink)
                rest = (bv, *args[2:])
        if not x.requires_grad:
            return None if rest is args[1:] else (x, *rest)
        # a fresh autograd node: its gradient is the sum over every path inside the skip
        xv = self._view(x)

        def total(g: torch.Tensor) -> None:
            acc.in_grad = norm(g)
            if not module.skip_enabled:  # no shortcut: every path goes through the branch
                acc.shortcut_grad = None
                acc.branch_grad = None if acc.two_inputs else acc.in_grad
            elif acc.shortcut_grad_t is not None and not acc.two_inputs:
                acc.branch_grad = norm(g - acc.shortcut_grad_t)
            acc.shortcut_grad_t = None

        xv.register_hook(total)
        return (xv, *rest)

    def _on_skip_out(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not self.recording:
            return
        acc = self.skips.get(id(module))
        y = out[0] if isinstance(out, tuple) else out
        if acc is None or not isinstance(y, torch.Tensor):
            return
        acc.out_norm = norm(y)
        if y.requires_grad:

            def sink(g: torch.Tensor) -> None:
                acc.out_grad = norm(g)

            y.register_hook(sink)

    def _tap_parts(self, m: SkipModule) -> None:
        """Hooks on the skip's own parts: the shortcut's input (the gradient through the
        shortcut; the branch's is the rest of ``∂L/∂x``) and the merge's two inputs (the
        forward balance). A shortcut still pending (planned at the first forward) is
        hooked from the next pass on."""
        sc, merge = m.shortcut, m.merge
        if id(sc) not in self.hooked and not isinstance(sc, PendingShortcut):
            self.hooked.add(id(sc))

            def shortcut_in(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
                acc = self.skips.get(id(m))
                if not self.recording or acc is None or not args:
                    return None
                x = args[0]
                if not isinstance(x, torch.Tensor) or not x.requires_grad:
                    return None
                xs = self._view(x)

                def sink(g: torch.Tensor) -> None:
                    acc.shortcut_grad = norm(g)
                    acc.shortcut_grad_t = g.detach()

                xs.register_hook(sink)
                return (xs, *args[1:])

            self.handles.append(sc.register_forward_pre_hook(shortcut_in))
        if id(merge) not in self.hooked:
            self.hooked.add(id(merge))

            def merge_in(_: nn.Module, args: tuple[Any, ...]) -> None:
                acc = self.skips.get(id(m))
                if not self.recording or acc is None or len(args) < 2:
                    return
                skip, branch = args[0], args[1]
                if isinstance(skip, torch.Tensor) and isinstance(branch, torch.Tensor):
                    acc.shortcut_norm, acc.branch_norm = norm(skip), norm(branch)

            self.handles.append(merge.register_forward_pre_hook(merge_in))

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a new autograd node (same values), remembered as an alias when tracing."""
        v = x.view_as(x)
        if self.trace:
            self.keep.extend((x, v))
            self.alias[id(v)] = self.alias.get(id(x), id(x))
        return v

    def _on_any(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not self.recording:
            return
        y = out[0] if isinstance(out, tuple) and out else out
        ins = [a for a in args if isinstance(a, torch.Tensor)]
        self.keep.extend(ins)
        if isinstance(y, torch.Tensor):
            self.keep.append(y)
        self.calls.append(
            Trace(
                path=self.paths.get(id(module), "?"),
                module=module,
                order=len(self.calls),
                inputs=[id(a) for a in ins],
                in_shapes=[tuple(a.shape) for a in ins],
                output=id(y) if isinstance(y, torch.Tensor) else None,
                out_shape=tuple(y.shape) if isinstance(y, torch.Tensor) else None,
                leaf=next(module.children(), None) is None,
            )
        )


def own_grad_norms(model: nn.Module, grads: Mapping[int, torch.Tensor | None]) -> dict[int, float]:
    """``‖∂L/∂W‖`` over each weight layer's own parameters, from a ``{id(param): grad}`` map."""
    out: dict[int, float] = {}
    for m in model.modules():
        if not is_weight_layer(m):
            continue
        sq = 0.0
        seen = False
        for p in m.parameters(recurse=False):
            g = grads.get(id(p))
            if g is not None:
                sq += norm(g) ** 2
                seen = True
        out[id(m)] = math.sqrt(sq) if seen else math.nan
    return out


def split_batch(batch: Batch) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """``(x, y, …)`` or ``x`` → ``(x, extra)``; ``loss_fn`` receives ``(output, *extra)``."""
    if isinstance(batch, torch.Tensor):
        return batch, ()
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 1:
        x = batch[0]
        if isinstance(x, torch.Tensor):
            return x, tuple(batch[1:])
    raise ValueError(
        "batch must be an input tensor or a tuple (x, y, ...) whose first item is the input "
        f"tensor; got {type(batch).__name__}"
    )
