"""Lesion study (Veit et al. 2016): the test error with skip blocks deleted at test time.

Veit, Wilber & Belongie found that deleting one residual block of a trained ResNet barely
changes its error (except at downsampling blocks), that deleting one layer of a plain net
sends it to chance, and that the error grows smoothly with the number of deleted blocks:
residual nets behave like ensembles of shallower paths.

Every skip is a :class:`skipkit.SkipModule`, ``y = post(merge(shortcut(x), branch(x)))``.
*Deleting* a block removes its branch and keeps everything else, through forward hooks on the
protocol's parts (no instance is patched):

- a block with its skip on: the branch's output is replaced, at the merge's input, by the
  value that makes it contribute nothing (:attr:`Merge.neutral_branch <skipkit.merges.Merge>`),
  so the block computes ``post(merge(shortcut(x), 0))``:

  ================  ===========================  ======================================
  merge             the deleted block            meaning
  ================  ===========================  ======================================
  add               ``post(shortcut(x))``        Veit et al.'s lesion: the block is its
                                                 shortcut
  rezero, layer-    ``post(shortcut(x))``        the same (``s + α·0``)
  scale, skipinit
  weighted          ``post(a · shortcut(x))``    the skip keeps its learned weight ``a``
  gate (highway)    ``post((1 - T) · shortcut)`` the carry part only: the transform gate
                                                 ``T`` still scales what passes
  concat            ``post(cat([0, shortcut]))`` the next layers see zeros where the
                                                 branch's features were (reduced, if the
                                                 merge reduces)
  mul               ``post(shortcut(x))``        the branch is replaced by ones, the
                                                 neutral element of ``·``
  film              ``post(1 + shortcut(x))``    the same (``1·(1 + s)``)
  tanh_gate         ``post(tanh(W s + c) · s)``  the gated skip alone
  ================  ===========================  ======================================

- a block with its skip off (the plain twin, :func:`skipkit.skips_disabled`): the whole block
  is replaced by the identity, ``post(x)``, where its output has its input's shape; a block
  that changes the shape (a stage change: stride or width) cannot be deleted and is reported
  with ``error = None``.

Stage-changing blocks (input shape != output shape) are flagged in both cases and left out of
the random sets of ``k > 1`` blocks, so that the ``k`` curve measures the ensemble claim and
not the downsampling blocks.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from skipkit.diagnostics.plot import plot_lesion
from skipkit.skips import SkipModule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["BlockLesion", "Lesion", "SetLesion", "lesion"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BlockLesion:
    """One block deleted alone.

    Attributes:
        name: the block's module path.
        index: its position among the model's skips (input to output).
        stage_change: its output's shape differs from its input's (stride or width).
        skip_enabled: whether its skip was on (deleted: the branch) or off (deleted: the
            whole block, replaced by the identity).
        in_shape, out_shape: of one example, without the batch dim.
        error, loss: with this block deleted; ``None`` when it cannot be (a plain block that
            changes the shape).
    """

    name: str
    index: int
    stage_change: bool
    skip_enabled: bool
    in_shape: list[int]
    out_shape: list[int]
    error: float | None
    loss: float | None


@dataclass
class SetLesion:
    """``k`` blocks deleted together."""

    k: int
    blocks: list[str]
    error: float
    loss: float


@dataclass
class Lesion:
    """The result of :func:`lesion` for one model.

    Attributes:
        name: a label for plots.
        error, loss: of the intact model (error: a fraction in [0, 1]).
        examples: how many examples each error is over.
        blocks: every selected block deleted alone.
        sets: random sets of ``k > 1`` blocks deleted together.
    """

    name: str
    error: float
    loss: float
    examples: int
    blocks: list[BlockLesion]
    sets: list[SetLesion] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        """Whether every selected block had its skip off (the plain twin)."""
        return not any(b.skip_enabled for b in self.blocks)

    def by_k(self) -> dict[int, dict[str, float]]:
        """Error against the number of deleted blocks: ``{k: {mean, std, min, max, n}}``;
        ``k = 0`` is the intact model, ``k = 1`` the single lesions outside stage changes."""
        groups: dict[int, list[float]] = {0: [self.error]}
        ones = [b.error for b in self.blocks if b.error is not None and not b.stage_change]
        if ones:
            groups[1] = ones
        for s in self.sets:
            groups.setdefault(s.k, []).append(s.error)
        return {
            k: {
                "mean": statistics.fmean(v),
                "std": statistics.pstdev(v),
                "min": min(v),
                "max": max(v),
                "n": float(len(v)),
            }
            for k, v in sorted(groups.items())
        }

    def summary(self) -> dict[str, Any]:
        """The intact error, and the mean / largest error increase of single lesions inside
        stages and at stage changes (``None`` where there are none)."""

        def stats(rows: list[BlockLesion]) -> dict[str, float] | None:
            errs = [b.error for b in rows if b.error is not None]
            if not errs:
                return None
            return {
                "mean_increase": statistics.fmean(errs) - self.error,
                "max_increase": max(errs) - self.error,
                "max_error": max(errs),
            }

        return {
            "name": self.name,
            "error": self.error,
            "within_stage": stats([b for b in self.blocks if not b.stage_change]),
            "stage_change": stats([b for b in self.blocks if b.stage_change]),
            "not_deletable": [b.name for b in self.blocks if b.error is None],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plain": self.plain,
            "error": self.error,
            "loss": self.loss,
            "examples": self.examples,
            "blocks": [asdict(b) for b in self.blocks],
            "sets": [asdict(s) for s in self.sets],
            "by_k": {str(k): v for k, v in self.by_k().items()},
            "summary": self.summary(),
            "meta": dict(self.meta),
        }

    def plot(self, path: str | os.PathLike[str] | None = None, **kw: Any) -> Figure:
        """:func:`skipkit.diagnostics.plot.plot_lesion` of this result alone."""
        return plot_lesion([self], path, **kw)


# ------------------------------------------------------------------------------------ hooks


def _first(t: Any) -> Any:
    return t[0] if isinstance(t, tuple) else t


class _Deletion:
    """Forward hooks that delete the branches of some blocks while registered."""

    def __init__(self, blocks: Sequence[tuple[str, SkipModule]]) -> None:
        self.blocks = blocks
        self.fired: set[str] = set()

    def _merge_hook(self, name: str, neutral: float) -> Callable[..., Any]:
        def hook(_merge: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            self.fired.add(name)
            skip, branch = args[0], args[1]
            return (skip, torch.full_like(branch, neutral), *args[2:])

        return hook

    def _identity_hook(self, name: str, block: SkipModule) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            self.fired.add(name)
            x = _first(args[0])
            # clone: an in-place post (ReLU(inplace=True)) must not change the block's input
            y = x if block.post is None else block.post(x.clone())
            return (y, *out[1:]) if isinstance(out, tuple) else y

        return hook

    @contextmanager
    def active(self) -> Iterator[None]:
        handles = []
        try:
            for name, block in self.blocks:
                if block.skip_enabled:
                    hook = self._merge_hook(name, block.merge.neutral_branch)
                    handles.append(block.merge.register_forward_pre_hook(hook))
                else:
                    handles.append(block.register_forward_hook(self._identity_hook(name, block)))
            yield
        finally:
            for h in handles:
                h.remove()
        missing = [n for n, _ in self.blocks if n not in self.fired]
        if missing:
            raise ValueError(
                f"lesion: {', '.join(missing)} did not run its merge during the forward pass, so "
                "its branch could not be deleted; a SkipModule must compute "
                "post(merge(shortcut(x), branch(x))) through its merge module"
            )


# ------------------------------------------------------------------------------------- data


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _batches(data: Any, batch_size: int, device: torch.device) -> Batches:
    """``data`` as a list of ``(x, y)`` batches on ``device``, collated once."""
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"data: x has {x.shape[0]} examples but y has {y.shape[0]}; give (x, y) with "
                "the same first dim"
            )
        pairs: Iterable[Any] = (
            (x[i : i + batch_size], y[i : i + batch_size])
            for i in range(0, int(x.shape[0]), batch_size)
        )
    elif isinstance(data, Dataset):
        pairs = DataLoader(data, batch_size=batch_size, shuffle=False)
    elif isinstance(data, Iterable):
        pairs = data
    else:
        raise TypeError(
            "data must be (x, y) tensors, a Dataset of (x, y) pairs or an iterable of (x, y) "
            f"batches; got {type(data).__name__}"
        )
    out = [(b[0].to(device), b[1].to(device)) for b in pairs]
    if not out or sum(int(b[0].shape[0]) for b in out) == 0:
        raise ValueError("lesion: the data is empty")
    return out


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Batches, loss_fn: LossFn) -> tuple[float, float]:
    """``(error, loss)`` of ``model`` over ``batches`` (error: a fraction of examples)."""
    wrong, total, count = 0, 0.0, 0
    for x, y in batches:
        out = model(x)
        wrong += int((out.argmax(1) != y).sum())
        total += float(loss_fn(out, y)) * int(x.shape[0])
        count += int(x.shape[0])
    return wrong / count, total / count


@torch.no_grad()
def _shapes(
    model: nn.Module, blocks: Sequence[tuple[str, SkipModule]], x: torch.Tensor
) -> dict[str, tuple[list[int], list[int]]]:
    """Each block's input and output shape (of one example) from one forward pass."""
    seen: dict[str, tuple[list[int], list[int]]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            seen.setdefault(name, (list(_first(args[0]).shape[1:]), list(_first(out).shape[1:])))

        return record

    handles = [b.register_forward_hook(hook(n)) for n, b in blocks]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    unused = [n for n, _ in blocks if n not in seen]
    if unused:
        raise ValueError(f"lesion: the forward pass does not run the skips {', '.join(unused)}")
    return seen


# ------------------------------------------------------------------------------------ study


def _select(model: nn.Module, blocks: Sequence[str] | None) -> list[tuple[str, SkipModule]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, SkipModule)]
    if not found:
        raise ValueError(
            f"lesion: {type(model).__name__} has no skipkit.SkipModule; build it from skipkit "
            "blocks (a plain twin: the residual model inside skipkit.skips_disabled(model))"
        )
    if blocks is None:
        return found
    if isinstance(blocks, str):
        raise TypeError(f"blocks must be a list of module paths, got the string {blocks!r}")
    by_name = dict(found)
    unknown = [b for b in blocks if b not in by_name]
    if unknown:
        shown = ", ".join(n for n, _ in found[:8]) + (", ..." if len(found) > 8 else "")
        raise ValueError(
            f"lesion: blocks {unknown} are not skips of the model; its skips are: {shown}"
        )
    return [(b, by_name[b]) for b in blocks]


def _sets(names: list[str], k: int, count: int, rng: random.Random) -> list[tuple[str, ...]]:
    """``count`` distinct random ``k``-sets of ``names`` (all of them when there are fewer)."""
    if math.comb(len(names), k) <= count:
        return list(itertools.combinations(names, k))
    picked: set[tuple[str, ...]] = set()
    out: list[tuple[str, ...]] = []
    while len(out) < count:
        s = tuple(sorted(rng.sample(names, k), key=names.index))
        if s not in picked:
            picked.add(s)
            out.append(s)
    return out


def lesion(
    model: nn.Module,
    data: Any,
    *,
    blocks: Sequence[str] | None = None,
    k: int | Sequence[int] = 1,
    sets: int = 10,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    batch_size: int = 512,
    name: str = "",
) -> Lesion:
    """Test error with skip blocks deleted (Veit et al. 2016); see the module docstring for
    what deleting a block means for each merge and for a plain twin.

    Args:
        model: a classifier ``(N, …) -> (N, K)`` logits containing :class:`skipkit.SkipModule`
            blocks; evaluated in eval mode without gradients, its training flag restored.
        data: ``(x, y)`` tensors, a ``Dataset`` of pairs, or an iterable of ``(x, y)`` batches
            (the test set, in Veit et al.).
        blocks: module paths of the skips to study (default: every skip of the model).
        k: the numbers of blocks deleted together. Every selected block is always deleted
            alone (``k = 1``); for each ``k > 1``, ``sets`` random sets of ``k`` blocks (drawn
            among the selected blocks that keep the shape, seeded by ``seed``; every set when
            there are at most ``sets``).
        sets: random sets per ``k > 1``.
        seed: seeds the sets (the same seed gives the same sets and errors).
        loss_fn: ``loss_fn(logits, y)`` -> the batch mean (default: cross-entropy).
        batch_size: for tensors and datasets.
        name: the label for plots.

    Returns:
        a :class:`Lesion`.

    Raises:
        ValueError: no skips, unknown ``blocks``, ``k`` out of range, empty data.
    """
    chosen = _select(model, blocks)
    given = [k] if isinstance(k, int) else list(k)
    if not given or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in given):
        raise ValueError(f"k must be a positive int or a sequence of them, got {k!r}")
    ks = sorted(set(given))
    if sets < 1:
        raise ValueError(f"sets must be >= 1, got {sets}")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    batches = _batches(data, batch_size, device)
    was_training = model.training
    model.eval()
    try:
        shapes = _shapes(model, chosen, batches[0][0])
        error, loss = _evaluate(model, batches, loss_fn)
        rows = []
        for i, (n, m) in enumerate(chosen):
            (in_shape, out_shape) = shapes[n]
            stage = in_shape != out_shape
            err: float | None = None
            lss: float | None = None
            if m.skip_enabled or not stage:
                with _Deletion([(n, m)]).active():
                    err, lss = _evaluate(model, batches, loss_fn)
            rows.append(BlockLesion(n, i, stage, m.skip_enabled, in_shape, out_shape, err, lss))
        pool = [r.name for r in rows if not r.stage_change]
        too_big = [v for v in ks if v > max(len(pool), 1)]
        if too_big:
            raise ValueError(
                f"k={too_big[0]} but only {len(pool)} selected blocks keep the shape; give k <= "
                f"{len(pool)}"
            )
        rng = random.Random(seed)
        by_name = dict(chosen)
        found = []
        for v in (v for v in ks if v > 1):
            for s in _sets(pool, v, sets, rng):
                with _Deletion([(b, by_name[b]) for b in s]).active():
                    err2, lss2 = _evaluate(model, batches, loss_fn)
                found.append(SetLesion(v, list(s), err2, lss2))
    finally:
        model.train(was_training)
    examples = sum(int(b[0].shape[0]) for b in batches)
    return Lesion(
        name, error, loss, examples, rows, found, {"seed": seed, "k": ks, "sets_per_k": sets}
    )
