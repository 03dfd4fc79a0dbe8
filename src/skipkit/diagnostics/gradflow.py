"""Gradient flow: how strongly each layer and each skip of a model passes the signal on.

One forward and one backward pass over a batch give, per *layer* (a module owning a weight of
two or more dims: convolutions, linear layers, embeddings; in execution order = depth):

- ``weight_norm`` ``‖W‖`` and ``weight_grad_norm`` ``‖∂L/∂W‖`` (all of the module's own
  parameters, Frobenius norms);
- ``act_norm`` ``‖a‖`` and ``act_grad_norm`` ``‖∂L/∂a‖`` of the layer's output ``a`` (the whole
  batch tensor, e.g. ``(N, C, L)``; ``numel`` is kept so an RMS can be derived);
- ``response_std``: the standard deviation of the layer's response *after the normalization
  that follows it* (He et al. 2015, Fig. 7: after BN, before the addition), or of the raw output
  when no norm follows;
- ``effective_rank`` (on request): ``exp(entropy(σ / Σσ))`` of the singular values σ of the
  ``(N, D)`` matrix of per-example outputs (Roy & Vetterli 2007); it falls towards 1 when the
  examples' representations collapse onto one direction.

and per *skip* (each :class:`~skipkit.SkipModule`), with ``x`` its input and ``y`` its output:

- ``in_grad_norm`` ``‖∂L/∂x‖`` and ``out_grad_norm`` ``‖∂L/∂y‖``;
- ``branch_norm`` ``‖F(x)‖`` and ``shortcut_norm`` ``‖S(x)‖``: the two signals the merge joins
  (forward), and ``forward_ratio = branch_norm / shortcut_norm``;
- ``branch_grad_norm``: ``‖∂L/∂x‖`` through the branch only, ``shortcut_grad_norm``: through the
  shortcut only (the rest of ``∂L/∂x``), and ``grad_ratio`` of the two. A ratio far below 1 means
  the block is close to the identity (the gradient rides the shortcut); far above 1 means the
  branch dominates and the skip does little.

Every number is read from the skip's protocol parts (:class:`~skipkit.SkipModule`): hooks on
its ``shortcut`` (the gradient through the shortcut; the branch's is the rest of ``∂L/∂x``)
and on its ``merge`` (the two signals it joins), so every skip of every model reports them,
the ImageNet ResNets and surgery's added skips included. A switched-off skip reports no
shortcut numbers; its whole input gradient goes through the branch.

Modules inside a skip's shortcut (projection convs) are part of the skip, not of the depth.
A module called several times in one pass (weight sharing) keeps its first call's depth and
sums its activation norms (in squares) over the calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from skipkit.diagnostics._probe import (
    Batch,
    Probe,
    effective_rank,
    is_norm_layer,
    is_weight_layer,
    norm,
    own_grad_norms,
    split_batch,
)
from skipkit.diagnostics.plot import plot_flow_in_time, plot_gradient_flow
from skipkit.skips import SkipModule, materialize
from skipkit.train import Callback

if TYPE_CHECKING:
    from skipkit.train import Trainer

log = logging.getLogger(__name__)

__all__ = [
    "GradientFlow",
    "GradientFlowRecorder",
    "LayerFlow",
    "SkipFlow",
    "effective_rank",
    "gradient_flow",
    "is_norm_layer",
    "is_weight_layer",
]

LossFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------------- records


@dataclass
class LayerFlow:
    """Gradient-flow numbers of one weight layer (see the module docstring)."""

    path: str
    depth: int
    kind: str
    out_shape: tuple[int, ...]
    numel: int
    weight_norm: float
    weight_grad_norm: float
    act_norm: float
    act_grad_norm: float
    response_std: float
    effective_rank: float | None = None
    calls: int = 1

    @property
    def act_grad_rms(self) -> float:
        """``‖∂L/∂a‖ / sqrt(numel)``: comparable across layers of different output sizes."""
        return self.act_grad_norm / math.sqrt(max(self.numel, 1))


@dataclass
class SkipFlow:
    """Forward and backward balance of one skip (see the module docstring)."""

    path: str
    kind: str
    depth: int
    enabled: bool
    in_norm: float
    out_norm: float
    in_grad_norm: float | None
    out_grad_norm: float | None
    branch_norm: float | None = None
    shortcut_norm: float | None = None
    branch_grad_norm: float | None = None
    shortcut_grad_norm: float | None = None

    @property
    def forward_ratio(self) -> float | None:
        """``‖F(x)‖ / ‖S(x)‖``; ``None`` when either part is unknown or the shortcut is zero."""
        return _ratio(self.branch_norm, self.shortcut_norm)

    @property
    def grad_ratio(self) -> float | None:
        """``‖∂L/∂x via F‖ / ‖∂L/∂x via S‖``; ``None`` when unknown or the shortcut is off."""
        return _ratio(self.branch_grad_norm, self.shortcut_grad_norm)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0.0:
        return None
    return a / b


@dataclass
class GradientFlow:
    """The result of :func:`gradient_flow`: per-layer and per-skip numbers of one pass.

    Attributes:
        layers: main-path weight layers in execution order (``depth`` 1, 2, …).
        skips: every :class:`~skipkit.SkipModule` that ran, in execution order.
        loss: the batch loss.
        input_grad_norm: ``‖∂L/∂x‖`` at the model input (``None`` for integer inputs).
        name: a label for plots (the model's class name unless given).
        step: the training step, for snapshots taken by :class:`GradientFlowRecorder`.
    """

    layers: list[LayerFlow]
    skips: list[SkipFlow]
    loss: float
    input_grad_norm: float | None = None
    name: str = "model"
    step: int | None = None

    def column(self, key: str) -> list[float]:
        """One per-layer quantity in depth order, e.g. ``flow.column("act_grad_norm")``."""
        out: list[float] = []
        for layer in self.layers:
            v = getattr(layer, key)
            out.append(math.nan if v is None else float(v))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"name", "step", "loss", "input_grad_norm", "layers": [...],
        "skips": [...]}``; skips carry their ``forward_ratio`` and ``grad_ratio``."""
        skips = []
        for s in self.skips:
            d = asdict(s)
            d["forward_ratio"] = s.forward_ratio
            d["grad_ratio"] = s.grad_ratio
            skips.append(_finite(d))
        layers = []
        for layer in self.layers:
            d = asdict(layer)
            d["out_shape"] = list(layer.out_shape)
            layers.append(_finite(d))
        return {
            "name": self.name,
            "step": self.step,
            "loss": _json_float(self.loss),
            "input_grad_norm": _json_float(self.input_grad_norm),
            "layers": layers,
            "skips": skips,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradientFlow:
        """Inverse of :meth:`to_dict` (ratios are recomputed)."""
        layers = []
        for row in d["layers"]:
            row = {
                k: (math.nan if v is None and k != "effective_rank" else v) for k, v in row.items()
            }
            row["out_shape"] = tuple(row["out_shape"])
            layers.append(LayerFlow(**row))
        keep = {f for f in SkipFlow.__dataclass_fields__}
        skips = [SkipFlow(**{k: v for k, v in row.items() if k in keep}) for row in d["skips"]]
        loss = d.get("loss")
        return cls(
            layers=layers,
            skips=skips,
            loss=math.nan if loss is None else float(loss),
            input_grad_norm=d.get("input_grad_norm"),
            name=str(d.get("name", "model")),
            step=d.get("step"),
        )

    def plot(self, path: str, **kwargs: Any) -> None:
        """Gradient norm against depth (log scale); see :func:`plot_gradient_flow`."""
        plot_gradient_flow([self], path, **kwargs)


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_json_float(v) if isinstance(v, float) else v) for k, v in d.items()}


def gradient_flow(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    train: bool = True,
    ranks: bool = False,
    name: str | None = None,
) -> GradientFlow:
    """Per-layer and per-skip gradient and activation norms from one forward + backward pass.

    The model is left exactly as it was: parameters' ``.grad`` are untouched (the gradients are
    taken with :func:`torch.autograd.grad`), BatchNorm running statistics and train/eval flags
    are restored, every hook is removed.

    Args:
        model: any ``nn.Module``.
        batch: ``(x, y)`` (``loss_fn(model(x), y)``), ``(x, *extra)`` or just ``x``
            (``loss_fn(model(x))``). ``x``: ``(N, *S)``, on the model's device.
        loss_fn: returns a scalar loss, e.g. ``nn.CrossEntropyLoss()``.
        train: run the pass in train mode (BatchNorm uses batch statistics, as in training);
            ``False`` uses eval mode.
        ranks: also compute each layer's ``effective_rank`` (one SVD per layer).
        name: the label for plots; the model's class name by default.

    Returns:
        A :class:`GradientFlow`.

    Example:
        >>> flow = gradient_flow(model, (x, y), nn.CrossEntropyLoss())
        >>> flow.column("act_grad_norm")       # ‖∂L/∂a‖ per layer, input side first
    """
    flow, _ = measure(model, batch, loss_fn, train=train, ranks=ranks, trace=False, name=name)
    return flow


def measure(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    *,
    train: bool,
    ranks: bool,
    trace: bool,
    name: str | None,
) -> tuple[GradientFlow, Probe]:
    x, extra = split_batch(batch)
    if any(isinstance(m, SkipModule) and not m.ready for m in model.modules()):
        # the probe reads each skip's parts, so lazily planned shortcuts must exist first
        materialize(model, x)
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    probe = Probe(model, ranks=ranks, trace=trace)
    try:
        model.train(train)
        params = [p for p in model.parameters() if p.requires_grad]
        if x.is_floating_point():
            # the input needs a gradient so the first skip's input does too
            x = x.detach().requires_grad_(True)
        probe.armed = True
        with torch.enable_grad():
            out = model(x)
            loss = loss_fn(out, *extra)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(
                    "loss_fn must return a scalar tensor (a mean over the batch); got "
                    f"{type(loss).__name__} {getattr(loss, 'shape', '')}"
                )
            wrt = [*params, x] if x.requires_grad else params
            if not wrt or not loss.requires_grad:
                raise ValueError(
                    "the loss does not depend on any parameter that requires grad; "
                    "gradient_flow needs a differentiable model"
                )
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        probe.armed = False
        by_param = {id(p): g for p, g in zip(params, grads[: len(params)], strict=True)}
        input_grad = grads[-1] if x.requires_grad else None
        flow = _assemble(
            probe,
            own_grad_norms(model, by_param),
            loss=float(loss.detach()),
            input_grad_norm=norm(input_grad) if input_grad is not None else None,
            name=name or type(model).__name__,
        )
    finally:
        probe.armed = False
        probe.detach()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes:
            m.training = mode
    return flow, probe


def _assemble(
    probe: Probe,
    weight_grads: dict[int, float],
    *,
    loss: float,
    input_grad_norm: float | None,
    name: str,
    step: int | None = None,
) -> GradientFlow:
    layers = []
    for acc in sorted(probe.layers.values(), key=lambda a: a.depth):
        own = list(acc.module.parameters(recurse=False))
        layers.append(
            LayerFlow(
                path=acc.path,
                depth=acc.depth,
                kind=type(acc.module).__name__,
                out_shape=acc.out_shape,
                numel=acc.numel,
                weight_norm=math.sqrt(sum(norm(p) ** 2 for p in own)),
                weight_grad_norm=weight_grads.get(id(acc.module), math.nan),
                act_norm=math.sqrt(acc.act_sq),
                act_grad_norm=math.sqrt(acc.grad_sq) if acc.grads_seen else math.nan,
                response_std=acc.response_std,
                effective_rank=acc.effective_rank,
                calls=acc.calls,
            )
        )
    skips = [
        SkipFlow(
            path=a.path,
            kind=type(a.module).__name__,
            depth=a.depth,
            enabled=bool(a.module.skip_enabled),
            in_norm=a.in_norm,
            out_norm=a.out_norm,
            in_grad_norm=a.in_grad,
            out_grad_norm=a.out_grad,
            branch_norm=a.branch_norm,
            shortcut_norm=a.shortcut_norm if a.module.skip_enabled else None,
            branch_grad_norm=a.branch_grad,
            shortcut_grad_norm=a.shortcut_grad if a.module.skip_enabled else None,
        )
        for a in sorted(probe.skips.values(), key=lambda a: a.order)
    ]
    return GradientFlow(
        layers=layers,
        skips=skips,
        loss=loss,
        input_grad_norm=input_grad_norm,
        name=name,
        step=step,
    )


# ------------------------------------------------------------------------- recording in time


@dataclass
class GradientFlowRecorder(Callback):
    """Record :class:`GradientFlow` snapshots while a model trains.

    With :class:`skipkit.train.Trainer`: pass it as a callback; every ``every`` optimizer steps
    (step 0 included) it records the training step's own forward and backward pass (the weight
    gradients are read from ``p.grad`` after backward, before the optimizer step)::

        rec = GradientFlowRecorder(every=50)
        Trainer(model, train, test, callbacks=[rec]).fit()
        rec.plot("gradflow_in_time.png"); rec.to_dict()

    In a hand-written loop::

        rec = GradientFlowRecorder(every=50).attach(model)
        for step, (x, y) in enumerate(loader):
            rec.arm(step)                       # records only when step % every == 0
            loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward()
            rec.record(step)                    # before opt.step()
            opt.step()
        rec.detach()

    Attributes:
        every: record one step in this many.
        ranks: also compute effective ranks (an SVD per layer per snapshot).
        history: the snapshots, oldest first (``GradientFlow.step`` set).
    """

    every: int = 50
    ranks: bool = False
    name: str | None = None
    history: list[GradientFlow] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"GradientFlowRecorder(every={self.every}) needs every >= 1")
        self._probe: Probe | None = None

    def attach(self, model: nn.Module) -> GradientFlowRecorder:
        """Install the hooks on ``model`` (idempotent for the same model)."""
        if self._probe is not None:
            if self._probe.model is model:
                return self
            self.detach()
        self._probe = Probe(model, ranks=self.ranks)
        return self

    def detach(self) -> None:
        """Remove the hooks; the history stays."""
        if self._probe is not None:
            self._probe.detach()
            self._probe = None

    def arm(self, step: int) -> bool:
        """Get ready to record the next forward/backward if ``step`` is due; returns whether."""
        if self._probe is None:
            raise ValueError("GradientFlowRecorder.arm: call attach(model) first")
        due = step % self.every == 0
        self._probe.reset()
        self._probe.armed = due
        return due

    def record(self, step: int) -> GradientFlow | None:
        """After ``backward()``: store the snapshot of this step (``None`` if it was not armed)."""
        probe = self._probe
        if probe is None or not probe.armed:
            return None
        probe.armed = False
        grads = {id(p): p.grad for p in probe.model.parameters() if p.grad is not None}
        flow = _assemble(
            probe,
            own_grad_norms(probe.model, grads),
            loss=math.nan,  # the Trainer fills it in at on_step_end
            input_grad_norm=None,
            name=self.name or type(probe.model).__name__,
            step=step,
        )
        probe.reset()
        self.history.append(flow)
        return flow

    # --- Trainer callback hooks ----------------------------------------------------------

    def on_train_start(self, trainer: Trainer) -> None:
        self.attach(trainer.model)
        self.arm(trainer.step)

    def on_after_backward(self, trainer: Trainer) -> None:
        self.record(trainer.step)

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.history and self.history[-1].step == trainer.step - 1:
            self.history[-1].loss = float(loss)
        self.arm(trainer.step)

    def on_train_end(self, trainer: Trainer) -> None:
        self.detach()

    # --- output --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"every": k, "snapshots": [GradientFlow.to_dict(), ...]}``."""
        return {"every": self.every, "snapshots": [f.to_dict() for f in self.history]}

    def plot(self, path: str, *, key: str = "act_grad_norm") -> None:
        """A heat map of ``key`` over (training step, depth); see :func:`plot_flow_in_time`."""
        plot_flow_in_time(self.history, path, key=key)
