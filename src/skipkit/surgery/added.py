"""One added skip: :class:`AddedSkip`, ``y = merge(adapter(src_out), dst_out)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.shapes import fmt_shape
from skipkit.skips import SkipInfo, SkipModule, module_summary


def _to_branch_device(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """src and dst on different devices (model parallel): the skip follows dst's output."""
    if len(args) == 2 and args[0].device != args[1].device:
        return (args[0].to(args[1].device), args[1])
    return None


class AddedSkip(SkipModule):
    """One added skip: ``y = merge(adapter(s), b)`` with ``s`` = src's output, ``b`` = dst's.

    ``forward(s, b)`` is the protocol's: the tap is src, ``shortcut`` is a view of
    ``adapter`` and the branch is dst's output ``b``, computed by the wrapped model.
    Shapes: ``s`` is whatever ``src`` gives (e.g. ``(N, C_s, H_s, W_s)``); ``b`` and ``y``
    have dst's shape (e.g. ``(N, C_d, H_d, W_d)``). With ``skip_enabled`` false (see
    :func:`skipkit.skips_disabled`) the result is ``merge.without_skip(b)``, which every
    surgery merge makes ``b``: the original model.

    Attributes:
        src, dst: module paths, relative to the wrapper's model (``"a.…"``/``"b.…"`` for
            :class:`Connected`).
        adapter: the shortcut (identity, 1×1 conv + BN, Linear, resample, …, plus any gain).
        merge: a :class:`skipkit.Merge`.
        merge_name: the merge's name (``"add"``, ``"rezero_skip"``, …; ``merge.name``).
        clone_src: copy src's output when taken, because a later layer modifies it in place.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        adapter: nn.Module,
        merge: Merge,
        *,
        zero_init: bool,
        merge_name: str | None = None,
        clone_src: bool = False,
        src_shape: Sequence[int] = (),
        dst_shape: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.src, self.dst = src, dst
        self.adapter: nn.Module = adapter
        self.merge: Merge = merge
        self.merge_name = merge.name if merge_name is None else merge_name
        self.zero_init = zero_init
        self.clone_src = clone_src
        self.src_shape = tuple(int(s) for s in src_shape)
        self.dst_shape = tuple(int(s) for s in dst_shape)
        self.tap = src
        self.path = self.label
        merge.path = self.label
        self.register_forward_pre_hook(_to_branch_device)

    @property
    def label(self) -> str:
        """``"src -> dst"``, for messages."""
        return f"{self.src or '<root>'} -> {self.dst or '<root>'}"

    @property
    def shortcut(self) -> nn.Module:
        return self.adapter

    @shortcut.setter
    def shortcut(self, module: nn.Module) -> None:
        self.adapter = module

    def branch(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """dst's output ``args[0]``, as the wrapped model computed it."""
        (dst_out,) = args
        assert isinstance(dst_out, torch.Tensor)
        return dst_out

    def describe(self) -> SkipInfo:
        return SkipInfo(
            path=self.path or "",
            kind="AddedSkip",
            tap=self.src,
            dst=self.dst,
            shortcut=module_summary(self.adapter),
            merge=self.merge_name,
            formula=self.merge.formula,
            parameters=sum(p.numel() for p in self.parameters()),
            enabled=self.skip_enabled,
            added=True,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.label}: {fmt_shape(self.src_shape)} -> {fmt_shape(self.dst_shape)}, "
            f"merge={self.merge_name!r}, zero_init={self.zero_init}"
        )
