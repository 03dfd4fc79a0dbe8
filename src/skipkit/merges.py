"""Merges: how the skipped signal joins the main path. One protocol for all of them.

Every merge is an ``nn.Module`` with ``forward(skip, branch) -> Tensor``. Merges that own
parameters whose size depends on the data (a concat reduction, a highway gate, LayerScale's
per-channel γ) create them in :meth:`Merge.setup`, which :class:`skipkit.Residual` calls once
the shapes are known (at construction with ``in_shape``, or at the first forward).

=============  ===================================================  ======================
string         module                                               formula
=============  ===================================================  ======================
``add``        :class:`Add`                                         ``s + b``
``concat``     :class:`Concat`                                      ``cat([b, s], C)``
``mul``        :class:`Mul`                                         ``s * b``
``gate``       :class:`Gate` (Highway)                              ``T*b + (1-T)*s``
``rezero``     :class:`Scale` ``(init=0)``                          ``s + α*b``
``skipinit``   :class:`Scale` ``(init=0)``                          ``s + α*b``
``layerscale`` :class:`Scale` ``(init=1e-5, per_channel=True)``     ``s + γ_c*b``
``weighted``   :class:`WeightedSum`                                 ``a*s + w*b``
=============  ===================================================  ======================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from skipkit.shapes import Layout, ShapeMismatchError, channel_dim, resolve_layout
from skipkit.shortcuts import pointwise

Shape = tuple[int, ...]


class Merge(nn.Module):
    """Base class of all merges: ``forward(skip, branch) -> Tensor``.

    Class attributes:
        match_channels: whether the shortcut must give the skip the branch's channel count
            (``False`` for concatenation, where only the other dims must agree).
    """

    match_channels: ClassVar[bool] = True
    path: str | None = None

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Check the shapes and create any shape-dependent parameters."""
        self._check(tuple(skip_shape), tuple(branch_shape))

    @property
    def ready(self) -> bool:
        """True once every parameter exists (always, for merges without lazy parameters)."""
        return True

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        """The merge's output with the skip path removed (the plain twin): ``branch``, or
        what the merge makes of it alone (a scaled branch, zeros where a skip was
        concatenated)."""
        return branch

    def out_shape(self, skip_shape: Sequence[int], branch_shape: Sequence[int]) -> Shape:
        """Shape of ``forward(skip, branch)``."""
        return tuple(branch_shape)

    def _check(self, skip_shape: Shape, branch_shape: Shape) -> None:
        if skip_shape != branch_shape:
            raise ShapeMismatchError(
                f"{type(self).__name__} needs equal shapes",
                path=self.path,
                skip_shape=skip_shape,
                branch_shape=branch_shape,
                fixes=["use shortcut='auto' so skipkit projects the skip"],
            )


class Add(Merge):
    """Residual addition: ``(N, *S) + (N, *S) -> (N, *S)``."""

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return skip + branch


class Mul(Merge):
    """Elementwise product: ``(N, *S) * (N, *S) -> (N, *S)``; without the skip: the branch."""

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return skip * branch


class Concat(Merge):
    """Dense concatenation along the channel dim, optionally reduced back to a width.

    ``(N, Cs, *S), (N, Cb, *S) -> (N, Cb + Cs, *S)``, or ``(N, out_channels, *S)`` after a
    1×1 conv (channels first) or ``nn.Linear`` (features last) when ``out_channels`` is set.
    The branch comes first, as in DenseNet (``cat([new, old])`` keeps the newest features in
    front) and seed 001's ``torch.cat([out, residual])``.

    Args:
        out_channels: reduce the concatenation to this many channels (``None``: no reduction).
        dim: concatenation dim; default the layout's channel dim (1, or -1 for features last).
    """

    match_channels: ClassVar[bool] = False

    def __init__(self, out_channels: int | None = None, *, dim: int | None = None) -> None:
        super().__init__()
        if out_channels is not None and out_channels < 1:
            raise ValueError(f"Concat(out_channels={out_channels}) must be positive")
        self.out_channels = out_channels
        self.dim = dim
        self.reduce: nn.Module | None = None
        self._dim: int = 1 if dim is None else dim
        self._skip_channels: int | None = None  # known after setup(), for without_skip

    @property
    def ready(self) -> bool:
        return self.out_channels is None or self.reduce is not None

    def _cat_dim(self, ndim: int, layout: Layout | None) -> int:
        if self.dim is not None:
            return self.dim % ndim
        return channel_dim(resolve_layout(layout, ndim), ndim)

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        s, b = tuple(skip_shape), tuple(branch_shape)
        self._dim = d = self._cat_dim(len(b), layout)
        self._check_cat(s, b)
        self._skip_channels = s[d]
        if self.out_channels is not None and self.reduce is None:
            lay = resolve_layout(layout, len(b))
            if self.dim is not None and self._dim not in (1, len(b) - 1):
                raise ValueError(
                    f"Concat(out_channels=...) reduces the channel dim; dim={self.dim} is not one"
                )
            lay = "NC" if self._dim == 1 and len(b) > 2 else lay
            self.reduce = pointwise(s[d] + b[d], self.out_channels, ndim=len(b), layout=lay).to(
                device=device, dtype=dtype
            )

    def out_shape(self, skip_shape: Sequence[int], branch_shape: Sequence[int]) -> Shape:
        out = list(branch_shape)
        d = self._dim % len(out)
        out[d] = self.out_channels or (skip_shape[d] + branch_shape[d])
        return tuple(out)

    def _check_cat(self, s: Shape, b: Shape) -> None:
        d = self._dim
        if len(s) != len(b) or s[:d] + s[d + 1 :] != b[:d] + b[d + 1 :]:
            raise ShapeMismatchError(
                f"Concat along dim {d} needs all other dims equal",
                path=self.path,
                skip_shape=s,
                branch_shape=b,
                fixes=["use shortcut='auto' to pool, crop or resample the skip"],
            )

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        d = self._dim
        if (
            skip.ndim != branch.ndim
            or skip.shape[:d] != branch.shape[:d]
            or (skip.shape[d + 1 :] != branch.shape[d + 1 :])
        ):
            self._check_cat(tuple(skip.shape), tuple(branch.shape))
        y = torch.cat([branch, skip], dim=d)
        return self.reduce(y) if self.reduce is not None else y

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        """``cat([b, 0])``: zeros in the skip's channels keep the output's width."""
        if self._skip_channels is None:
            raise RuntimeError("Concat.without_skip needs the skip's width: call setup() first")
        shape = list(branch.shape)
        shape[self._dim % branch.ndim] = self._skip_channels
        return self.forward(branch.new_zeros(shape), branch)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, dim={self._dim}"


def channel_transform(
    shape: Sequence[int],
    layout: Layout | None,
    *,
    bias: float,
    zero_weight: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A C -> C map on the channel dim of ``shape`` (1×1 conv or ``nn.Linear``), for gates.

    Its bias starts at ``bias``; ``zero_weight`` also zeroes the weight (a closed gate).
    """
    lay = resolve_layout(layout, len(shape))
    c = int(shape[channel_dim(lay, len(shape))])
    t = pointwise(c, c, ndim=len(shape), layout=lay)
    assert isinstance(t.weight, torch.Tensor) and isinstance(t.bias, torch.Tensor)
    nn.init.constant_(t.bias, bias)
    if zero_weight:
        nn.init.zeros_(t.weight)
    return t.to(device=device, dtype=dtype)


class Gate(Merge):
    """Highway gate (Srivastava et al. 2015): ``y = T(s)*b + (1 - T(s))*s``.

    ``T(s) = sigmoid(W_T s + b_T)`` with a 1×1 conv (channels first) or ``nn.Linear``; the bias
    starts at ``bias`` (negative: the block starts by carrying its input; -1, -2, -3 suit
    depths of about 10, 20, 30). Shapes: ``(N, *S), (N, *S) -> (N, *S)``.

    Without the skip (the plain twin) the gate goes with it: ``y = b``, the plain network
    Srivastava et al. compare highways against.
    """

    def __init__(self, bias: float = -2.0) -> None:
        super().__init__()
        self.bias = float(bias)
        self.transform: nn.Module | None = None

    @property
    def ready(self) -> bool:
        return self.transform is not None

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check(tuple(skip_shape), tuple(branch_shape))
        if self.transform is None:
            self.transform = channel_transform(
                branch_shape, layout, bias=self.bias, device=device, dtype=dtype
            )

    def gate(self, skip: torch.Tensor) -> torch.Tensor:
        """The transform gate ``T(s)`` in (0, 1), shaped like ``skip``."""
        assert self.transform is not None, "Gate used before setup()"
        return torch.sigmoid(self.transform(skip))

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        t = self.gate(skip)
        return t * branch + (1.0 - t) * skip

    def extra_repr(self) -> str:
        return f"bias={self.bias}"


class Scale(Merge):
    """Scaled residual: ``y = s + α*b`` (ReZero, SkipInit) or ``s + γ_c*b`` (LayerScale).

    Args:
        init: initial value of α (ReZero/SkipInit: 0, so the block starts as the identity) or
            of every γ_c (LayerScale: 1e-5).
        per_channel: one learnable γ per channel (LayerScale) instead of one scalar α.

    Shapes: ``(N, *S), (N, *S) -> (N, *S)``.
    """

    def __init__(self, init: float = 0.0, *, per_channel: bool = False) -> None:
        super().__init__()
        self.init = float(init)
        self.per_channel = per_channel
        self.alpha: nn.Parameter | None = (
            None if per_channel else nn.Parameter(torch.tensor(self.init))
        )
        self._view: tuple[int, ...] = ()

    @property
    def ready(self) -> bool:
        return self.alpha is not None

    def setup(
        self,
        skip_shape: Sequence[int],
        branch_shape: Sequence[int],
        layout: Layout | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check(tuple(skip_shape), tuple(branch_shape))
        if self.per_channel:
            n = len(branch_shape)
            d = channel_dim(resolve_layout(layout, n), n)
            c = branch_shape[d]
            self._view = tuple(c if i == d else 1 for i in range(1, n))
            if self.alpha is None:
                self.alpha = nn.Parameter(torch.full((c,), self.init, device=device, dtype=dtype))

    def _factor(self) -> torch.Tensor:
        assert self.alpha is not None, "Scale used before setup()"
        return self.alpha.view(self._view) if self.per_channel else self.alpha

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return skip + self._factor() * branch

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return self._factor() * branch

    def extra_repr(self) -> str:
        return f"init={self.init}, per_channel={self.per_channel}"


class WeightedSum(Merge):
    """Learned weighted sum (DenseFormer-style): ``y = a*s + w*b``, ``a, w`` scalars.

    Shapes: ``(N, *S), (N, *S) -> (N, *S)``.
    """

    def __init__(self, skip_weight: float = 1.0, branch_weight: float = 1.0) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.tensor([float(skip_weight), float(branch_weight)]))

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return self.weights[0] * skip + self.weights[1] * branch

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return self.weights[1] * branch


MERGES: dict[str, Callable[[], Merge]] = {
    "add": Add,
    "concat": Concat,
    "mul": Mul,
    "gate": Gate,
    "rezero": lambda: Scale(0.0),
    "skipinit": lambda: Scale(0.0),
    "layerscale": lambda: Scale(1e-5, per_channel=True),
    "weighted": WeightedSum,
}


def resolve_merge(spec: str | Merge) -> Merge:
    """A merge module from a string shorthand (see :data:`MERGES`) or a :class:`Merge`."""
    if isinstance(spec, Merge):
        return spec
    if isinstance(spec, str):
        if spec not in MERGES:
            raise ValueError(f"unknown merge {spec!r}; choose one of {sorted(MERGES)}")
        return MERGES[spec]()
    raise TypeError(
        f"merge must be a string ({sorted(MERGES)}) or a skipkit Merge module, "
        f"got {type(spec).__name__}"
    )


__all__ = [
    "MERGES",
    "Add",
    "Concat",
    "Gate",
    "Merge",
    "Mul",
    "Scale",
    "WeightedSum",
    "channel_transform",
    "resolve_merge",
]
