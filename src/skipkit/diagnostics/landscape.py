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

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from skipkit._io import atomic_write_bytes
from skipkit.diagnostics.plot import plot_landscape
from skipkit.train.distributed import setup as setup_distributed

log = logging.getLogger(__name__)

__all__ = [
    "Direction",
    "Landscape",
    "evaluate",
    "filter_normalize",
    "interpolate",
    "loss_landscape",
    "random_direction",
]

Direction = dict[str, torch.Tensor]
"""A direction in weight space: state-dict name -> tensor shaped like that entry. Names that
are absent do not move."""

LossFn = Callable[..., torch.Tensor]
PointHook = Callable[[int, float, float], None]
_FORMAT = "skipkit-landscape/1"


# ---------------------------------------------------------------------------------- result


@dataclass
class Landscape:
    """Loss (and accuracy) on a 1-D or 2-D grid of weight-space offsets.

    Attributes:
        coords: one array of offsets per axis, ``(steps,)`` each.
        loss: ``(steps,)`` or ``(steps_x, steps_y)``; ``loss[i, j]`` is at
            ``(coords[0][i], coords[1][j])``. Mean loss over the data.
        accuracy: same shape; fraction correct (``NaN`` when the outputs are not class
            logits ``(N, K)`` with integer targets ``(N,)``).
        kind: ``"random"`` (Li et al. directions), ``"interpolation"`` or ``"directions"``
            (given by the caller).
        name: a label for plots.
        meta: what produced it: seed, include_bn, number of examples, direction norms,
            processes, seconds.
    """

    coords: list[np.ndarray]
    loss: np.ndarray
    accuracy: np.ndarray
    kind: str = "random"
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        """1 or 2."""
        return len(self.coords)

    def at_origin(self) -> float:
        """The loss at the grid point nearest offset 0 (the trained weights, for ``random``)."""
        idx = tuple(int(np.argmin(np.abs(c))) for c in self.coords)
        return float(self.loss[idx])

    def summary(self) -> dict[str, float]:
        """A few numbers to compare landscapes: the loss at the origin, the smallest and largest
        loss on the grid, and (2-D) ``nonconvex``: the share of interior points where the
        discrete Hessian of the loss has a negative eigenvalue (Li et al. map ``|λmin/λmax|``;
        this is its cheap cousin: 0 for a convex bowl, large for a chaotic surface)."""
        finite = self.loss[np.isfinite(self.loss)]
        out = {
            "origin_loss": self.at_origin(),
            "min_loss": float(finite.min()) if finite.size else math.nan,
            "max_loss": float(finite.max()) if finite.size else math.nan,
        }
        if self.dims == 2 and min(self.loss.shape) >= 3:
            z, (x, y) = self.loss, self.coords
            hx, hy = float(x[1] - x[0]), float(y[1] - y[0])
            dxx = (z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]) / hx**2
            dyy = (z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]) / hy**2
            dxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * hx * hy)
            # the smaller eigenvalue of [[dxx, dxy], [dxy, dyy]]
            lam_min = (dxx + dyy) / 2 - np.sqrt(((dxx - dyy) / 2) ** 2 + dxy**2)
            ok = np.isfinite(lam_min)
            out["nonconvex"] = float((lam_min[ok] < 0).mean()) if ok.any() else math.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: coords, loss and accuracy as nested lists (``None`` for non-finite)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "dims": self.dims,
            "coords": [c.tolist() for c in self.coords],
            "loss": _json_array(self.loss),
            "accuracy": _json_array(self.accuracy),
            "summary": {k: (v if math.isfinite(v) else None) for k, v in self.summary().items()},
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.npz`` (no pickles; ``meta`` as JSON text). Returns the path."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "kind": np.array(self.kind),
            "name": np.array(self.name),
            "meta": np.array(json.dumps(self.meta)),
        }
        for i, c in enumerate(self.coords):
            arrays[f"coord{i}"] = c
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        path = Path(path)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Landscape:
        """Read a file written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z or str(z["format"]) != _FORMAT:
                    raise ValueError(f"{str(path)!r} is not a skipkit landscape file")
                coords = [z[f"coord{i}"] for i in range(2) if f"coord{i}" in z]
                return cls(
                    coords=coords,
                    loss=z["loss"],
                    accuracy=z["accuracy"],
                    kind=str(z["kind"]),
                    name=str(z["name"]),
                    meta=json.loads(str(z["meta"])),
                )
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read landscape {str(path)!r}: {e}") from e

    def plot(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        """Contours, a 3-D surface and 1-D slices (2-D grids) or the curve (1-D);
        see :func:`skipkit.diagnostics.plot.plot_landscape`."""
        plot_landscape(self, path, **kwargs)


def _json_array(a: np.ndarray) -> list[Any]:
    out = np.where(np.isfinite(a), a, np.nan).astype(object)
    out[~np.isfinite(a)] = None
    result: list[Any] = out.tolist()
    return result


# ------------------------------------------------------------------------------ directions


def filter_normalize(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    *,
    include_bn: bool = False,
) -> Direction:
    """Li et al.'s filter normalization of ``direction`` against ``weights`` (a new dict).

    For each tensor of two or more dims, every slice along dim 0 is scaled to the norm of the
    matching slice of the weight: ``d_i · ‖w_i‖ / (‖d_i‖ + 1e-10)``. One-dim tensors become
    zero, or with ``include_bn`` are scaled as a whole: ``d · ‖w‖ / (‖d‖ + 1e-10)``.
    """
    out: Direction = {}
    for name, d in direction.items():
        w = weights[name].detach()
        if d.shape != w.shape:
            raise ValueError(
                f"direction {name!r} has shape {tuple(d.shape)}, the weight {tuple(w.shape)}"
            )
        if d.dim() <= 1:
            out[name] = d * (w.norm() / (d.norm() + 1e-10)) if include_bn else torch.zeros_like(d)
            continue
        dn = d.flatten(1).norm(dim=1)
        wn = w.flatten(1).norm(dim=1)
        out[name] = d * (wn / (dn + 1e-10)).view(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(
    model: nn.Module,
    *,
    seed: int = 0,
    include_bn: bool = False,
    generator: torch.Generator | None = None,
) -> Direction:
    """A filter-normalized Gaussian direction over ``model``'s parameters.

    The noise is drawn on the CPU in float32 from ``generator`` (or one seeded with ``seed``)
    in parameter order, so the same seed gives the same direction on every device and in every
    process. Returns ``{name: tensor}`` on the parameters' devices and dtypes.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    weights = dict(model.named_parameters())
    raw = {
        name: torch.randn(p.shape, generator=gen, dtype=torch.float32)
        for name, p in weights.items()
    }
    cpu_w = {n: p.detach().to("cpu", torch.float32) for n, p in weights.items()}
    normed = filter_normalize(raw, cpu_w, include_bn=include_bn)
    return {n: d.to(weights[n].device, weights[n].dtype) for n, d in normed.items()}


# ------------------------------------------------------------------------------------ data


Batches = Callable[[], Iterable[Sequence[Any]]]


def _as_batches(data: Any, batch_size: int, device: torch.device | None) -> tuple[Batches, int]:
    """``data`` as a re-iterable source of ``(x, *rest)`` batches, and the example count
    (``-1`` when an iterable does not tell).

    Tensors and map-style datasets are collated once and kept (on the model's device); a
    DataLoader or other iterable of batches is iterated afresh for every point.
    """

    def move(b: Sequence[Any]) -> list[Any]:
        return [t.to(device) if isinstance(t, torch.Tensor) and device else t for t in b]

    if isinstance(data, torch.Tensor):
        data = (data,)
    if isinstance(data, tuple | list) and data and all(isinstance(t, torch.Tensor) for t in data):
        n = int(data[0].shape[0])
        if any(int(t.shape[0]) != n for t in data):
            raise ValueError("the data tensors (x, y, ...) must have the same first dim")
        kept = [move([t[i : i + batch_size] for t in data]) for i in range(0, n, batch_size)]
        return (lambda: kept), n
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        kept = [move(b if isinstance(b, list | tuple) else [b]) for b in loader]
        return (lambda: kept), len(data)
    if isinstance(data, Iterable):

        def fresh() -> Iterable[Sequence[Any]]:
            for b in data:
                yield move(b if isinstance(b, list | tuple) else [b])

        size = getattr(getattr(data, "dataset", None), "__len__", None)
        return fresh, (int(size()) if callable(size) else -1)
    raise ValueError(
        "data must be a tensor pair (x, y), a Dataset, or an iterable of (x, y) batches; got "
        f"{type(data).__name__}"
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Sequence[Any]], loss_fn: LossFn
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches`` (as it is: set eval mode first).

    ``loss_fn(model(x), *rest)`` must return the batch mean; batches are weighted by size.
    Accuracy is ``NaN`` unless the output is ``(N, K)`` logits and ``rest[0]`` integer
    targets ``(N,)``.
    """
    total, correct, count = 0.0, 0, 0
    classify = True
    for b in batches:
        x, rest = b[0], tuple(b[1:])
        out = model(x)
        n = int(x.shape[0])
        total += float(loss_fn(out, *rest)) * n
        y = rest[0] if rest else None
        if (
            classify
            and isinstance(out, torch.Tensor)
            and out.dim() == 2
            and isinstance(y, torch.Tensor)
            and y.dim() == 1
            and not y.is_floating_point()
        ):
            correct += int((out.argmax(1) == y).sum())
        else:
            classify = False
        count += n
    if count == 0:
        raise ValueError("the data is empty")
    return total / count, (correct / count if classify else math.nan)


# ------------------------------------------------------------------------------- the scan


@dataclass
class _Plan:
    origin: dict[str, torch.Tensor]
    dirs: list[Direction]
    coords: list[np.ndarray]
    kind: str
    meta: dict[str, Any]
    nonnegative: frozenset[str] = frozenset()  # entries clamped at 0 (variances)


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


def _world(device: torch.device | None) -> tuple[int, int]:
    """``(rank, world_size)``, joining the ``torchrun`` group when its variables are set
    (nccl when the model is on a GPU, gloo otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        if not dist.is_initialized():
            if device is not None and device.type == "cuda":
                setup_distributed(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
            else:
                setup_distributed(torch.device("cpu"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _scan(
    model: nn.Module,
    plan: _Plan,
    data: Any,
    loss_fn: LossFn,
    *,
    batch_size: int,
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_interval: float,
    progress: bool,
    on_point: PointHook | None,
    name: str | None,
) -> Landscape:
    t0 = time.perf_counter()
    device = next((t.device for t in plan.origin.values()), None)
    rank, world = _world(device)
    batches, examples = _as_batches(data, batch_size, device)
    shape = tuple(len(c) for c in plan.coords)
    total = math.prod(shape)
    loss = np.full(total, np.nan)
    acc = np.full(total, np.nan)
    done = np.zeros(total, dtype=bool)
    fingerprint = _fingerprint(plan, batches, examples)
    ckpt = _Checkpoint(checkpoint, fingerprint, rank=rank, world=world) if checkpoint else None
    if ckpt is not None:
        ckpt.load_into(loss, acc, done)
    todo = [int(i) for i in np.flatnonzero(~done)][rank::world]
    mine = done.copy() if rank == 0 else np.zeros(total, dtype=bool)
    mine[todo] = True

    live = model.state_dict(keep_vars=True)
    saved = {k: live[k].detach().clone() for k in plan.origin}
    modes = [(m, m.training) for m in model.modules()]
    bar = None
    if progress and rank == 0 and todo:
        bar = tqdm(total=len(todo) * world, desc="landscape", unit="pt")
    last_write = time.monotonic()
    try:
        model.eval()
        for i in todo:
            offsets = np.unravel_index(i, shape)
            _move(live, plan, [float(c[o]) for c, o in zip(plan.coords, offsets, strict=True)])
            loss[i], acc[i] = evaluate(model, batches(), loss_fn)
            done[i] = True
            if bar is not None:
                bar.update(world)
            if on_point is not None:
                on_point(i, float(loss[i]), float(acc[i]))
            if ckpt is not None and time.monotonic() - last_write >= checkpoint_interval:
                ckpt.write(loss, acc, done)
                last_write = time.monotonic()
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                live[k].copy_(v)
        for m, mode in modes:
            m.training = mode
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.write(loss, acc, done)
    if world > 1:
        loss, acc, done = _gather(loss, acc, mine, device)
    if ckpt is not None and rank == 0:
        ckpt.finish(loss, acc, done)
    meta = dict(plan.meta)
    meta.update(
        examples=examples,
        processes=world,
        seconds=round(time.perf_counter() - t0, 3),
        model=type(model).__name__,
    )
    return Landscape(
        coords=[c.copy() for c in plan.coords],
        loss=loss.reshape(shape),
        accuracy=acc.reshape(shape),
        kind=plan.kind,
        name=name or type(model).__name__,
        meta=meta,
    )


@torch.no_grad()
def _move(live: Mapping[str, torch.Tensor], plan: _Plan, offsets: Sequence[float]) -> None:
    """``w = θ + Σ a_k·d_k`` for every moved tensor, computed from the origin each time."""
    for k, w in plan.origin.items():
        t = live[k]
        t.copy_(w)
        for d, a in zip(plan.dirs, offsets, strict=True):
            step = d.get(k)
            if step is not None and a != 0.0:
                t.add_(step, alpha=a)
        if k in plan.nonnegative:
            t.clamp_(min=0)


def _gather(
    loss: np.ndarray, acc: np.ndarray, mine: np.ndarray, device: torch.device | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every rank's points into everyone's arrays. Each point is sent by exactly one rank (its
    evaluator, or rank 0 for points read from a checkpoint) and the others add exact zeros,
    so the values, NaN and inf included, arrive unchanged."""
    on = device if dist.get_backend() == "nccl" and device is not None else torch.device("cpu")
    vals = np.stack([np.where(mine, loss, 0.0), np.where(mine, acc, 0.0), mine.astype(float)])
    t = torch.from_numpy(vals).to(on)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = t.cpu().numpy()
    got = out[2] > 0
    return np.where(got, out[0], np.nan), np.where(got, out[1], np.nan), got


def _fingerprint(plan: _Plan, batches: Batches, examples: int) -> str:
    """A hash of everything a point's value depends on except the model's code."""
    h = hashlib.sha256()
    h.update(plan.kind.encode())
    h.update(",".join(sorted(plan.nonnegative)).encode())
    for c in plan.coords:
        h.update(np.ascontiguousarray(c, dtype=np.float64).tobytes())
    for group in (plan.origin, *plan.dirs):
        for k in sorted(group):
            h.update(k.encode())
            h.update(_bytes(group[k]))
    h.update(str(examples).encode())
    first = next(iter(batches()), None)
    if first is not None:
        for t in first:
            if isinstance(t, torch.Tensor):
                h.update(_bytes(t))
    return h.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    raw: bytes = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return raw


class _Checkpoint:
    """The resume file: ``path`` holds merged results; under several processes each rank
    also writes ``<path>.rank<r>.npz`` with its own points until the run completes."""

    def __init__(self, path: str | os.PathLike[str], fingerprint: str, *, rank: int, world: int):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.rank, self.world = rank, world
        self.own = self.path if world == 1 else self._rank_file(rank)

    def _rank_file(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.name}.rank{rank}.npz")

    def _files(self) -> list[Path]:
        extra = sorted(self.path.parent.glob(f"{self.path.name}.rank*.npz"))
        return [p for p in [self.path, *extra] if p.exists()]

    def load_into(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        for f in self._files():
            try:
                with np.load(f, allow_pickle=False) as z:
                    fp = str(z["fingerprint"])
                    if fp != self.fingerprint:
                        raise ValueError(
                            f"checkpoint {str(f)!r} belongs to another landscape (other model "
                            "weights, directions, grid or data); delete it or choose another "
                            "checkpoint path"
                        )
                    d = z["done"]
                    if d.shape != done.shape:
                        raise ValueError(f"checkpoint {str(f)!r} has another grid size")
                    loss[d], acc[d] = z["loss"][d], z["accuracy"][d]
                    done |= d
            except (OSError, KeyError) as e:
                log.warning("ignoring unreadable landscape checkpoint %s (%s)", f, e)
        if done.any():
            log.info("resuming landscape: %d of %d points already done", done.sum(), done.size)

    def write(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            fingerprint=np.array(self.fingerprint),
            loss=loss,
            accuracy=acc,
            done=done,
        )
        atomic_write_bytes(self.own, buf.getvalue())

    def finish(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        """Rank 0 after the gather: one merged file, the per-rank files removed."""
        if self.world > 1:
            self.own = self.path
            self.write(loss, acc, done)
            for r in range(self.world):
                self._rank_file(r).unlink(missing_ok=True)
