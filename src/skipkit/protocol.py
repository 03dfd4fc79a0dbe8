"""The skip protocol: :class:`SkipModule` (tap, shortcut, merge, post and one ``forward``),
the :class:`SkipInfo` it describes itself with, and :func:`skips_disabled`, the plain twin.

Split from :mod:`skipkit.skips`, which re-exports every name here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from skipkit._residual import main_output, replace_main
from skipkit.merges import Merge


@dataclasses.dataclass(frozen=True)
class SkipInfo:
    """One skip of a model, as :meth:`SkipModule.describe` and :func:`skipkit.list_skips`
    report it.

    Attributes:
        path: the skip module's path in the model (``"layer1.0"``, ``"skips.0"``).
        kind: its class (``"Residual"``, ``"DenseBlock"``, ``"AddedSkip"``, a model block).
        tap: where the skipped signal comes from: ``"input"`` for a block's own input, or
            the ``src`` path of an added skip.
        dst: where it joins: the block's own output (its path) or the added skip's ``dst``.
        shortcut: what makes it fit (``"Identity"``, ``"Conv2d+BatchNorm2d"``, …).
        merge: how it joins: the merge's name, the string that builds it (``"add"``,
            ``"concat"``, ``"film"``, ``"rezero_skip"``, …; see :mod:`skipkit.merges`), or
            the class name of a merge no string builds.
        formula: what the merge computes (``"s + b"``, ``"b * (1 + s)"``), in ``s`` = the
            skip (the shortcut's output; for an added skip, the adapter's output on ``src``'s
            output) and ``b`` = the branch's output (for an added skip, ``dst``'s output).
        parameters: parameters of the shortcut and merge (not the body's).
        enabled: ``False`` inside :func:`skipkit.skips_disabled`.
        added: whether :func:`skipkit.add_skip` / :func:`skipkit.connect` added it (only
            those can be removed with :func:`skipkit.remove_skip`).
    """

    path: str
    kind: str
    tap: str
    dst: str
    shortcut: str
    merge: str
    formula: str
    parameters: int
    enabled: bool
    added: bool

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` (JSON-ready)."""
        return dataclasses.asdict(self)


class PendingShortcut(nn.Module):
    """Stands in for a shortcut that is planned from the shapes at the first forward.

    It has no parameters; :class:`Residual` replaces it with the planned module (so
    ``block.shortcut`` is always a module, never ``None``). Calling it is a bug in the
    caller: the owner plans its shortcut before using it.

    Attributes:
        kind: the requested kind (``"auto"``, ``"project"``, …; see :mod:`skipkit.shortcuts`).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            f"shortcut {self.kind!r} has not been planned yet; its skip plans it at its first "
            "forward (or call skipkit.materialize(model, example_input))"
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def module_summary(module: nn.Module) -> str:
    """``Sequential(Conv2d, BatchNorm2d)`` -> ``"Conv2d+BatchNorm2d"``; others: the class name
    (a pending shortcut: its requested kind)."""
    if isinstance(module, PendingShortcut):
        return module.kind
    parts: list[str] = []
    stack: list[nn.Module] = [module]
    while stack:
        m = stack.pop(0)
        if isinstance(m, nn.Sequential):
            stack = list(m) + stack
        else:
            parts.append(type(m).__name__)
    return "+".join(parts) or "Identity"


def _own_parameter_count(*modules: nn.Module | None) -> int:
    return sum(
        p.numel()
        for m in modules
        if m is not None
        for p in m.parameters()
        if not isinstance(p, nn.parameter.UninitializedParameter)
    )


class SkipModule(nn.Module):
    """The protocol every skip implements: four parts and one ``forward``.

    ::

              ┌──────────── shortcut ─────────────┐
        x ──tap┤                                   merge ── post ──> y
              └──────────── branch ───────────────┘

    ``forward(x, *args, **kwargs)`` is written once, here::

        b = branch(x, *args, **kwargs)
        y = merge(shortcut(x), b) if skip_enabled else merge.without_skip(b)
        return y if post is None else post(y)

    so the plain twin (``skip_enabled = False``, see :func:`skips_disabled`), the diagnostics
    and :func:`skipkit.list_skips` are written against these parts, never against a subclass.

    RNN convention: when ``branch`` returns a tuple ``(output, state, ...)`` the skip joins
    ``output`` and ``forward`` returns ``(y, state, ...)``; a tuple input uses its first item
    (the output of a residual RNN layer below), so such layers stack in ``nn.Sequential``.

    Attributes:
        tap: where the skipped signal comes from: ``"input"`` (the block's own input) or a
            module path.
        shortcut: what makes the skip fit (``nn.Identity`` when nothing is needed).
        merge: how it joins (a :class:`~skipkit.merges.Merge`).
        post: what follows the join, or ``None``.
        skip_enabled: when ``False`` the module computes its plain twin (same weights, the
            skip path removed): ``post(merge.without_skip(branch(x)))``.
        path: the module's dotted path in its model, for messages (set by
            :func:`materialize`).

    Subclasses implement :meth:`branch` and set the parts in ``__init__``.
    """

    tap: str = "input"
    shortcut: nn.Module
    merge: Merge
    post: nn.Module | None
    skip_enabled: bool = True
    path: str | None = None

    def __init__(self) -> None:
        super().__init__()
        # an instance attribute, not a class default: a class-level ``post = None`` would
        # hide a post module that nn.Module keeps in ``_modules``
        self.post = None

    def branch(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The main path: ``x`` (and any extra arguments) -> the branch output."""
        raise NotImplementedError(f"{type(self).__name__} must implement branch(x, ...)")

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, tuple):  # (output, state) from a residual RNN layer below
            x = x[0]
        out = self.branch(x, *args, **kwargs)
        # a tuple / dict / ModelOutput: the skip joins the main tensor, the rest passes through
        b = main_output(out)
        y = self.merge(self.shortcut(x), b) if self.skip_enabled else self.merge.without_skip(b)
        if self.post is not None:
            y = self.post(y)
        return y if out is b else replace_main(out, y)

    def describe(self) -> SkipInfo:
        """This skip's parts, typed (its ``path`` is :attr:`path`, or ``""`` if unset)."""
        where = self.path or ""
        return SkipInfo(
            path=where,
            kind=type(self).__name__,
            tap=self.tap,
            dst=where,
            shortcut=module_summary(self.shortcut),
            merge=self.merge.name,
            formula=self.merge.formula,
            parameters=_own_parameter_count(self.shortcut, self.merge),
            enabled=self.skip_enabled,
            added=False,
        )

    @property
    def ready(self) -> bool:
        """True when every lazy part exists (shapes have been seen)."""
        return True


@contextlib.contextmanager
def skips_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every skip of ``model`` off inside the ``with`` block.

    With the same weights the model then computes its plain twin: each
    :class:`SkipModule` (``Residual``, ``Highway``, ``DenseBlock``, skips added with
    :func:`skipkit.add_skip`, the blocks of :mod:`skipkit.models`) drops its skip path.
    Flags are restored on exit, even after an exception.
    """
    saved = [(m, m.skip_enabled) for m in model.modules() if isinstance(m, SkipModule)]
    for m, _ in saved:
        m.skip_enabled = False
    try:
        yield model
    finally:
        for m, flag in saved:
            m.skip_enabled = flag
