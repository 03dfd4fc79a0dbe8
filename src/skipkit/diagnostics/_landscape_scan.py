"""Evaluating the loss on a grid of weight-space points: the data, the loop, the ranks.

Separate from :mod:`skipkit.diagnostics.landscape`, which builds a :class:`_Plan` (the origin,
the directions and the grid) from the user's arguments: this module only runs a plan. It
moves the weights in place point by point, restores them bit-exactly, deals the points to
the ``torch.distributed`` ranks and gathers them, and keeps the resume file
(:mod:`skipkit.diagnostics._landscape_checkpoint`) up to date.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from skipkit.diagnostics._directions import Direction
from skipkit.diagnostics._landscape_checkpoint import _Checkpoint
from skipkit.diagnostics._landscape_result import Landscape
from skipkit.train.distributed import setup as setup_distributed

__all__ = ["LossFn", "PointHook", "evaluate"]

LossFn = Callable[..., torch.Tensor]
PointHook = Callable[[int, float, float], None]
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


@dataclass
class _Plan:
    """What a scan evaluates: the weights at offset 0 (``origin``, state-dict name -> tensor),
    one or two directions over the same names, one ``(steps,)`` array of offsets per direction,
    and the result's ``kind`` and ``meta``."""

    origin: dict[str, torch.Tensor]
    dirs: list[Direction]
    coords: list[np.ndarray]
    kind: str
    meta: dict[str, Any]
    nonnegative: frozenset[str] = frozenset()  # entries clamped at 0 (variances)


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
