"""Shape analysis for skips: what differs between the skipped signal and the branch.

Pure Python on shape tuples (no torch, no keras), so the PyTorch planner
(:func:`skipkit.shortcuts.plan_shortcut`), the Keras planner and U-Net's alignment read the
same facts. Each non-batch, non-channel dim of the skip ``a`` is fitted to the branch's ``b``:

==========  ===================================================================================
kind        meaning
==========  ===================================================================================
``same``    ``a == b``
``stride``  ``ceil(a / s) == b`` for an integer ``s >= 2`` (a padded strided conv; ``7 -> 4``)
``crop``    ``b < a`` but no stride gives ``b`` (a valid conv: ``10 -> 8`` crops 2)
``up``      ``b > a`` (upsampling; ``scale`` is ``b // a`` when it divides)
``unknown`` one side is ``None`` (a Keras dim known only at run time)
==========  ===================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Shape = tuple[int | None, ...]
FitKind = Literal["same", "stride", "crop", "up", "unknown"]


def stride_for(size_in: int | None, size_out: int | None) -> int | None:
    """The stride ``s`` of a 1x1 convolution with ``ceil(size_in / s) == size_out``.

    ``1`` for equal sizes (both unknown included); ``None`` when no stride fits: the size grows,
    only one side is known, or no integer works (``10 -> 6``). Odd sizes are fine: ``7 -> 4``
    is stride 2, as a padded stride-2 convolution gives.
    """
    if size_in == size_out:
        return 1
    if size_in is None or size_out is None or size_out < 1 or size_out > size_in:
        return None
    # ceil(a / s) == b needs s >= a / b, so the search starts there.
    s = max(2, size_in // size_out)
    while -(-size_in // s) >= size_out:
        if -(-size_in // s) == size_out:
            return s
        s += 1
    return None


@dataclass(frozen=True)
class DimFit:
    """How one dim of the skip (``size_in``) reaches the branch's size (``size_out``)."""

    size_in: int | None
    size_out: int | None
    kind: FitKind
    #: the subsampling stride (1 unless ``kind == "stride"``).
    stride: int = 1

    @property
    def scale(self) -> int | None:
        """The integer upsampling factor ``size_out / size_in`` (1 if equal), else ``None``."""
        a, b = self.size_in, self.size_out
        if a is None or b is None or b < a or b % a:
            return None
        return b // a

    @property
    def margins(self) -> tuple[int, int]:
        """The size difference split around the centre, ``(before, after)`` (``10 -> 8``:
        ``(1, 1)``; ``7 -> 4``: ``(1, 2)``), for a centre crop or a symmetric pad."""
        if self.size_in is None or self.size_out is None:
            return (0, 0)
        gap = abs(self.size_in - self.size_out)
        return (gap // 2, gap - gap // 2)


def fit_dim(size_in: int | None, size_out: int | None) -> DimFit:
    """The :class:`DimFit` of one dim (``7 -> 4``: stride 2; ``10 -> 8``: crop; ``4 -> 8``: up)."""
    if size_in == size_out:
        return DimFit(size_in, size_out, "same")
    if size_in is None or size_out is None:
        return DimFit(size_in, size_out, "unknown")
    if size_out > size_in:
        return DimFit(size_in, size_out, "up")
    stride = stride_for(size_in, size_out)
    if stride is None:
        return DimFit(size_in, size_out, "crop")
    return DimFit(size_in, size_out, "stride", stride)


@dataclass(frozen=True)
class ShapeDiff:
    """What differs between a skip shaped ``skip`` and a branch shaped ``branch``.

    ``dims`` fits every dim but the batch (0) and the channels (``channel_axis``), in order;
    it is empty when the ranks differ.
    """

    skip: Shape
    branch: Shape
    channel_axis: int
    dims: tuple[DimFit, ...]

    @property
    def rank_changed(self) -> bool:
        return len(self.skip) != len(self.branch)

    @property
    def batch_changed(self) -> bool:
        a, b = self.skip[0], self.branch[0]
        return a is not None and b is not None and a != b

    @property
    def channels_in(self) -> int | None:
        return self.skip[self.channel_axis]

    @property
    def channels_out(self) -> int | None:
        return self.branch[self.channel_axis]

    @property
    def channels_changed(self) -> bool:
        return self.channels_in != self.channels_out

    @property
    def kinds(self) -> frozenset[str]:
        """The fit kinds present among ``dims`` (``{"same", "stride"}``, …)."""
        return frozenset(d.kind for d in self.dims)

    @property
    def same_size(self) -> bool:
        """Every non-channel dim already fits."""
        return self.kinds <= {"same"}

    @property
    def strides(self) -> tuple[int, ...]:
        """Per dim, the stride (1 where the dim is not subsampled)."""
        return tuple(d.stride for d in self.dims)

    @property
    def scales(self) -> tuple[int, ...] | None:
        """Per dim, the integer upsampling factor, or ``None`` unless every dim has one."""
        scales = tuple(d.scale for d in self.dims)
        return None if any(s is None for s in scales) else scales  # type: ignore[return-value]


def analyse_shapes(
    skip: Sequence[int | None], branch: Sequence[int | None], *, channel_axis: int
) -> ShapeDiff:
    """Compare a skip's shape with the branch's (both ``(N, ...)``, the channels at
    ``channel_axis``, non-negative): see :class:`ShapeDiff`."""
    a, b = tuple(skip), tuple(branch)
    if len(a) != len(b):
        return ShapeDiff(a, b, channel_axis, ())
    dims = tuple(fit_dim(a[d], b[d]) for d in range(1, len(a)) if d != channel_axis)
    return ShapeDiff(a, b, channel_axis, dims)
