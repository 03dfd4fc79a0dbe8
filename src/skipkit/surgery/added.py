"""One added skip: :class:`AddedSkip`, ``y = merge(adapter(src_out), dst_out)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.shapes import fmt_shape
from skipkit.skips import SkipInfo, SkipModule
from skipkit.surgery.adapters import describe_adapter


class AddedSkip(SkipModule):
    """One added skip: ``y = merge(adapter(s), b)`` with ``s`` = src's output, ``b`` = dst's.

    Shapes: ``s`` is whatever ``src`` gives (e.g. ``(N, C_s, H_s, W_s)``); ``b`` and ``y``
    have dst's shape (e.g. ``(N, C_d, H_d, W_d)``). With ``skip_enabled`` false (see
    :func:`skipkit.skips_disabled`) the result is ``b``: the original model.

    Attributes:
        src, dst: module paths, relative to the wrapper's model (``"a.…"``/``"b.…"`` for
            :class:`Connected`).
        adapter: the shortcut (identity, 1×1 conv + BN, Linear, resample, …, plus any gain).
        merge: a :class:`skipkit.Merge`.
        merge_name: the merge as given (``"add"``, ``"rezero"``, …).
        clone_src: copy src's output when taken, because a later layer modifies it in place.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        adapter: nn.Module,
        merge: Merge,
        *,
        merge_name: str,
        zero_init: bool,
        clone_src: bool = False,
        src_shape: Sequence[int] = (),
        dst_shape: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.src, self.dst = src, dst
        self.adapter: nn.Module = adapter
        self.merge: Merge = merge
        self.merge_name = merge_name
        self.zero_init = zero_init
        self.clone_src = clone_src
        self.src_shape = tuple(int(s) for s in src_shape)
        self.dst_shape = tuple(int(s) for s in dst_shape)
        self.path = self.label
        merge.path = self.label

    @property
    def label(self) -> str:
        """``"src -> dst"``, for messages."""
        return f"{self.src or '<root>'} -> {self.dst or '<root>'}"

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``(src output, dst output) -> dst-shaped output``."""
        if not self.skip_enabled:
            return branch
        if skip.device != branch.device:  # src and dst on different devices (model parallel)
            skip = skip.to(branch.device)
        return self.merge(self.adapter(skip), branch)

    def describe(self) -> SkipInfo:
        return SkipInfo(
            path=self.path or "",
            kind="AddedSkip",
            tap=self.src,
            dst=self.dst,
            shortcut=describe_adapter(self.adapter),
            merge=self.merge_name,
            parameters=sum(p.numel() for p in self.parameters()),
            enabled=self.skip_enabled,
            added=True,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.label}: {fmt_shape(self.src_shape)} -> {fmt_shape(self.dst_shape)}, "
            f"merge={self.merge_name!r}, zero_init={self.zero_init}"
        )
