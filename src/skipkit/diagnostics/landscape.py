"""Loss landscapes (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

The loss is evaluated on a grid around the weights ``θ`` along one or two directions::

    f(a)    = L(θ + a·δ)               dims=1
    f(a, b) = L(θ + a·δ + b·η)         dims=2

**Directions.** :func:`random_direction` draws Gaussian noise shaped like every parameter and
normalizes it *filter by filter*: for each tensor with more than one dim, each slice along dim 0
(a conv filter, a row of a linear weight) gets the norm of the matching weight slice,
``d_i ← d_i · ‖w_i‖ / (‖d_i‖ + 1e-10)``, which makes landscapes of nets with different weight
scales comparable. One-dim tensors (biases, norm-layer weights) are zero in the direction unless
``include_bn=True`` (then each is scaled as a whole to its weight's norm). BatchNorm running
statistics are buffers and stay put. :func:`interpolate` instead walks the straight line between
two full states (parameters *and* buffers such as running statistics) of the same model.

**Evaluation.** Every point runs in eval mode under ``torch.no_grad()`` with the weights moved
in place: each point's weights are computed afresh from the saved origin
(``w.copy_(θ); w.add_(δ, alpha=a); w.add_(η, alpha=b)``), never by stepping from the previous
point, so a point's value does not depend on the order, the process or a resume. The model's
tensors are copied back bit-exactly at the end, also after an error or an interrupt.

**Resuming.** With ``checkpoint=path`` the points done so far are written to that ``.npz``
(atomically, at most every ``checkpoint_interval`` seconds, and when the run stops for any
reason); a new call with the same arguments evaluates only the missing points. A fingerprint
of the grid, the directions, the origin and the data guards against mixing runs.

**Several processes.** Under ``torchrun --nproc_per_node N`` (or any initialized
``torch.distributed`` group: gloo on CPU, nccl on GPU) the points are dealt round-robin to the
ranks, each rank evaluates its own on the full data, and every rank ends with the gathered
result (identical to a single-process run).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from skipkit.diagnostics._directions import Direction, filter_normalize, random_direction
from skipkit.diagnostics._landscape_result import Landscape
from skipkit.diagnostics._landscape_scan import LossFn, PointHook, _Plan, _scan, evaluate

__all__ = [
    "Direction",
    "Landscape",
    "evaluate",
    "filter_normalize",
    "interpolate",
    "loss_landscape",
    "random_direction",
]


def loss_landscape(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn,
    *,
    dims: int = 2,
    steps: int = 51,
    span: tuple[float, float] = (-1.0, 1.0),
    directions: Sequence[Mapping[str, torch.Tensor]] | None = None,
    seed: int = 0,
    include_bn: bool = False,
    batch_size: int = 512,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_interval: float = 30.0,
    progress: bool = False,
    on_point: PointHook | None = None,
    name: str | None = None,
) -> Landscape:
    """The loss around ``model``'s weights along random (or given) directions.

    Args:
        model: the trained network; its tensors are restored bit-exactly afterwards.
        data: ``(x, y)`` tensors, a ``Dataset`` of pairs, or an iterable of batches (a
            ``DataLoader``); Li et al. use the training set without augmentation.
        loss_fn: ``loss_fn(model(x), y)`` -> the batch-mean loss.
        dims: 1 (a curve) or 2 (a surface).
        steps: grid points per axis (Li et al.: 51).
        span: the offsets ``(first, last)`` on every axis.
        directions: one or two directions (``{name: tensor}``) used as given (no
            normalization; see :func:`filter_normalize`); ``dims`` follows their number.
        seed: seeds the random directions.
        include_bn: move one-dim tensors (biases, norm weights) too.
        batch_size: for tensors and datasets.
        checkpoint: a ``.npz`` file for resuming; see the module docstring.
        checkpoint_interval: seconds between checkpoint writes.
        progress: a tqdm bar (on rank 0).
        on_point: ``on_point(index, loss, accuracy)`` after each point this process
            evaluates (index into ``loss.ravel()``); raising stops the scan (with the
            checkpoint written and the weights restored).
        name: the label for plots.

    Returns:
        A :class:`Landscape` (``kind="random"`` or ``"directions"``).
    """
    if directions is None:
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        gen = torch.Generator().manual_seed(seed)
        dirs = [random_direction(model, include_bn=include_bn, generator=gen) for _ in range(dims)]
        kind = "random"
    else:
        dirs = [dict(d) for d in directions]
        if len(dirs) not in (1, 2):
            raise ValueError(f"give one or two directions, got {len(dirs)}")
        kind = "directions"
    state = model.state_dict(keep_vars=True)
    for d in dirs:
        for k, v in d.items():
            if k not in state:
                raise ValueError(f"direction entry {k!r} is not in the model's state_dict")
            if tuple(v.shape) != tuple(state[k].shape):
                raise ValueError(
                    f"direction entry {k!r} has shape {tuple(v.shape)}, the model's "
                    f"{tuple(state[k].shape)}"
                )
    # entries that are zero in every direction (biases and norms by default) need not move
    keys = sorted({k for d in dirs for k, v in d.items() if bool(v.any())})
    dirs = [{k: v for k, v in d.items() if k in keys} for d in dirs]
    origin = {k: state[k].detach().clone() for k in keys}
    coords = [_axis(span, steps) for _ in dirs]
    meta = {
        "seed": seed if directions is None else None,
        "include_bn": include_bn,
        "span": list(span),
        "steps": steps,
        "moved_tensors": len(keys),
        "direction_norms": [_tensors_norm(d.values()) for d in dirs],
    }
    plan = _Plan(origin=origin, dirs=dirs, coords=coords, kind=kind, meta=meta)
    return _scan(
        model,
        plan,
        data,
        loss_fn,
        batch_size=batch_size,
        checkpoint=checkpoint,
        checkpoint_interval=checkpoint_interval,
        progress=progress,
        on_point=on_point,
        name=name,
    )


def interpolate(
    model: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    data: Any,
    loss_fn: LossFn,
    *,
    steps: int = 51,
    span: tuple[float, float] = (-0.5, 1.5),
    batch_size: int = 512,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_interval: float = 30.0,
    progress: bool = False,
    on_point: PointHook | None = None,
    name: str | None = None,
) -> Landscape:
    """The loss along the line ``θ(a) = A + a·(B − A)`` between two states of ``model``.

    Every floating-point entry of the state dicts moves: parameters *and* buffers, so the
    BatchNorm running statistics are interpolated too (Li et al.: interpolating the parameters
    alone gives meaningless BN statistics). Integer buffers (``num_batches_tracked``) stay as
    they are, and BatchNorm running variances are clamped at zero where extrapolating past
    ``A`` or ``B`` would make them negative. ``a=0`` is ``A``, ``a=1`` is ``B`` (up to
    rounding); Li et al. plot ``[-0.5, 1.5]``. The model's own tensors are restored afterwards.

    Args:
        model: a model whose ``state_dict`` has the keys and shapes of both states.
        state_a, state_b: ``state_dict()`` of two trainings (e.g. small and large batch).
        data, loss_fn, batch_size, checkpoint, checkpoint_interval, progress, on_point, name:
            as in :func:`loss_landscape`.
        steps: points on the line.
        span: the first and last ``a``.

    Returns:
        A 1-D :class:`Landscape` with ``kind="interpolation"``.
    """
    own = model.state_dict(keep_vars=True)
    keys = [k for k, v in own.items() if v.is_floating_point()]
    for label, st in (("state_a", state_a), ("state_b", state_b)):
        missing = [k for k in keys if k not in st]
        if missing:
            raise ValueError(
                f"{label} lacks {len(missing)} entries of the model, e.g. {missing[:3]}"
            )
        wrong = [k for k in keys if tuple(st[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(f"{label} has other shapes for {wrong[:3]}")
    origin = {k: state_a[k].detach().to(own[k].device, own[k].dtype).clone() for k in keys}
    direction = {k: state_b[k].detach().to(own[k].device, own[k].dtype) - origin[k] for k in keys}
    meta = {
        "span": list(span),
        "steps": steps,
        "moved_tensors": len(keys),
        "distance": _tensors_norm(direction.values()),
    }
    # a line extrapolated past A or B can take a variance below zero, which has no meaning
    variances = frozenset(k for k in keys if k.endswith("running_var"))
    plan = _Plan(
        origin=origin,
        dirs=[direction],
        coords=[_axis(span, steps)],
        kind="interpolation",
        meta=meta,
        nonnegative=variances,
    )
    return _scan(
        model,
        plan,
        data,
        loss_fn,
        batch_size=batch_size,
        checkpoint=checkpoint,
        checkpoint_interval=checkpoint_interval,
        progress=progress,
        on_point=on_point,
        name=name,
    )


def _axis(span: tuple[float, float], steps: int) -> np.ndarray:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = float(span[0]), float(span[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or (steps > 1 and hi <= lo):
        raise ValueError(f"span must be (low, high) with low < high, got {span}")
    return np.linspace(lo, hi, steps)


def _tensors_norm(ts: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))
