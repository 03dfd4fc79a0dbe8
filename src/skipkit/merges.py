"""Merges: how the skipped signal joins the main path. One protocol for all of them.

Every merge is an ``nn.Module`` with ``forward(skip, branch) -> Tensor``. Merges that own
parameters whose size depends on the data (a concat reduction, a highway gate, LayerScale's
per-channel γ) create them in :meth:`Merge.setup`, which :class:`skipkit.Residual` calls once
the shapes are known (at construction with ``in_shape``, or at the first forward).

A string means one formula everywhere it is accepted (``Residual(merge=...)``, the models,
:func:`skipkit.add_skip`); each merge reports it as :attr:`Merge.formula`, in ``s`` (the skip:
the shortcut's output) and ``b`` (the branch's output):

===================  ===============================================  ===========================
string               module                                           formula
===================  ===============================================  ===========================
``add``              :class:`Add`                                     ``s + b``
``concat``           :class:`Concat`                                  ``cat([b, s], C)``
``mul``              :class:`Mul`                                     ``s * b``
``film``             :class:`Film` (FiLM-style)                       ``b * (1 + s)``
``gate``             :class:`Gate` (Highway)                          ``T*b + (1 - T)*s``
``tanh_gate``        :class:`TanhGate` (starts closed)                ``b + tanh(W s + c) * s``
``rezero``           :class:`Scale` ``(0)``                           ``s + α*b``
``skipinit``         :class:`Scale` ``(0)``                           ``s + α*b``
``layerscale``       :class:`Scale` ``(1e-5, per_channel=True)``      ``s + γ_c*b``
``rezero_skip``      :class:`Scale` ``(0, on="skip")``                ``b + α*s``
``layerscale_skip``  :class:`Scale` (``layerscale``, on the skip)     ``b + γ_c*s``
``weighted``         :class:`WeightedSum`                             ``a*s + w*b``
===================  ===============================================  ===========================

(``T = sigmoid(W s + c)``; ``Concat(out_channels=k)`` reduces to ``R(cat([b, s], C))``.) The
``*_skip`` scales put the learned factor on the skip, for a skip added to a trained path
(:func:`skipkit.add_skip`), where the branch is the model's own output and must stay whole.

:attr:`Merge.starts_as_branch` says whether a merge can start as ``b`` alone (what
``add_skip(..., zero_init=True)`` needs): when the skip is zero (``add``, ``film``), through
its own parameters (:meth:`Merge.start_as_branch`: ``concat`` reduced, ``tanh_gate``, the
``*_skip`` scales, ``weighted``), or never (``mul``, ``gate``, ``rezero``, ``skipinit``,
``layerscale``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from skipkit._checks import check_finite, check_positive_int
from skipkit._gates import Gate, TanhGate, channel_transform
from skipkit._merge import Merge, Shape, StartsAsBranch
from skipkit.shapes import Layout, ShapeMismatchError, channel_dim, resolve_layout
from skipkit.shortcuts import pointwise


class Add(Merge):
    """Residual addition: ``(N, *S) + (N, *S) -> (N, *S)``.

    Args:
        inplace: add the skip into the branch's memory (``branch += skip``, as torchvision's
            blocks do). Only for a branch whose last op does not keep its output for
            backward (a norm or a convolution does not; a ``sigmoid`` or ``tanh`` does).
    """

    _name = "add"
    _formula = "s + b"
    starts_as_branch: StartsAsBranch = "if_skip_is_zero"

    def __init__(self, *, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return branch.add_(skip) if self.inplace else skip + branch

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Mul(Merge):
    """Elementwise product: ``(N, *S) * (N, *S) -> (N, *S)``; without the skip: the branch.

    It never starts as the branch alone (``s * b`` is 0 where ``s`` is): :class:`Film` is the
    product that does.
    """

    _name = "mul"
    _formula = "s * b"
    starts_as_branch: StartsAsBranch = "never"
    neutral_branch: ClassVar[float] = 1.0

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return skip * branch


class Film(Merge):
    """FiLM-style modulation: ``y = b * (1 + s)``; shapes ``(N, *S), (N, *S) -> (N, *S)``.

    Equals ``b`` while the skip is zero, so a zero-initialised shortcut makes it start as the
    identity on the branch (``merge="film"``); without the skip: ``b``.
    """

    _name = "film"
    _formula = "b * (1 + s)"
    starts_as_branch: StartsAsBranch = "if_skip_is_zero"
    neutral_branch: ClassVar[float] = 1.0

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return branch * (1.0 + skip)


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
    _name = "concat"
    _formula = "cat([b, s], C)"
    starts_as_branch: StartsAsBranch = "by_own_parameters"

    def __init__(self, out_channels: int | None = None, *, dim: int | None = None) -> None:
        super().__init__()
        if out_channels is not None:
            check_positive_int("Concat(out_channels)", out_channels)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"Concat(dim=...) must be an int or None, got {type(dim).__name__}")
        self._formula = "cat([b, s], C)" if out_channels is None else "R(cat([b, s], C))"
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

    def start_as_branch(self) -> None:
        """``R = [I | 0]``: the reduction passes the branch through and ignores the skip
        (without a reduction the output is wider than ``b``: nothing to set)."""
        if self.reduce is None:
            return
        weight, bias = self.reduce.weight, self.reduce.bias
        assert isinstance(weight, torch.Tensor)
        c = weight.shape[0]  # out_channels: the branch's width when this can hold
        with torch.no_grad():
            weight.zero_()
            eye = torch.eye(c, dtype=weight.dtype, device=weight.device)
            weight[:, :c] = eye.view(*eye.shape, *(1,) * (weight.ndim - 2))
            if isinstance(bias, torch.Tensor):
                bias.zero_()

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, dim={self._dim}"


class Scale(Merge):
    """Scaled residual: ``y = s + α*b`` (ReZero, SkipInit) or ``s + γ_c*b`` (LayerScale); with
    ``on="skip"`` the factor scales the skip instead: ``y = b + α*s`` or ``b + γ_c*s``.

    Args:
        init: initial value of α (ReZero/SkipInit: 0, so the block starts as the identity) or
            of every γ_c (LayerScale: 1e-5).
        per_channel: one learnable γ per channel (LayerScale) instead of one scalar α.
        on: ``"branch"`` (the residual scalings) or ``"skip"`` (a skip added to a trained
            path, :func:`skipkit.add_skip`: the new skip is what starts small, the model's own
            output stays whole). Without the skip: ``α*b`` on the branch, ``b`` on the skip.

    Shapes: ``(N, *S), (N, *S) -> (N, *S)``.
    """

    # the branch scaling: what a Scale pickled before ``on`` existed computes
    on: str = "branch"
    _name = "rezero"
    _formula = "s + α*b"
    starts_as_branch: StartsAsBranch = "never"

    def __init__(self, init: float = 0.0, *, per_channel: bool = False, on: str = "branch") -> None:
        super().__init__()
        if on not in ("branch", "skip"):
            raise ValueError(f"Scale(on=...) must be 'branch' or 'skip', got {on!r}")
        self.init = check_finite("Scale(init)", init)
        self.per_channel = bool(per_channel)
        self.on = on
        factor = "γ_c" if self.per_channel else "α"
        self._name = ("layerscale" if self.per_channel else "rezero") + (
            "_skip" if on == "skip" else ""
        )
        self._formula = f"b + {factor}*s" if on == "skip" else f"s + {factor}*b"
        # scaling the branch, α = 0 gives the skip, never b alone
        self.starts_as_branch = "by_own_parameters" if on == "skip" else "never"
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
        if self.on == "skip":
            return branch + self._factor() * skip
        return skip + self._factor() * branch

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return branch if self.on == "skip" else self._factor() * branch

    def start_as_branch(self) -> None:
        """α (or every γ_c) = 0, for ``on="skip"``: ``y = b``, and ``dL/dα = g·s`` is not 0."""
        if self.on != "skip":
            super().start_as_branch()
        assert self.alpha is not None, "Scale used before setup()"
        nn.init.zeros_(self.alpha)

    def extra_repr(self) -> str:
        on = ", on='skip'" if self.on == "skip" else ""
        return f"init={self.init}, per_channel={self.per_channel}{on}"


class WeightedSum(Merge):
    """Learned weighted sum (DenseFormer-style): ``y = a*s + w*b``, ``a, w`` scalars.

    Shapes: ``(N, *S), (N, *S) -> (N, *S)``. It starts as ``b`` from ``a = 0, w = 1``.
    """

    _name = "weighted"
    _formula = "a*s + w*b"
    starts_as_branch: StartsAsBranch = "by_own_parameters"

    def __init__(self, skip_weight: float = 1.0, branch_weight: float = 1.0) -> None:
        super().__init__()
        a = check_finite("WeightedSum(skip_weight)", skip_weight)
        w = check_finite("WeightedSum(branch_weight)", branch_weight)
        self.weights = nn.Parameter(torch.tensor([a, w]))

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        return self.weights[0] * skip + self.weights[1] * branch

    def without_skip(self, branch: torch.Tensor) -> torch.Tensor:
        return self.weights[1] * branch

    def start_as_branch(self) -> None:
        """``a = 0, w = 1``."""
        with torch.no_grad():
            self.weights.copy_(torch.tensor([0.0, 1.0]))


def _skipinit() -> Merge:
    m = Scale(0.0)
    m._name = "skipinit"  # ReZero's formula under SkipInit's name: the name given is reported
    return m


MERGES: dict[str, Callable[[], Merge]] = {
    "add": Add,
    "concat": Concat,
    "mul": Mul,
    "film": Film,
    "gate": Gate,
    "tanh_gate": TanhGate,
    "rezero": lambda: Scale(0.0),
    "skipinit": _skipinit,
    "layerscale": lambda: Scale(1e-5, per_channel=True),
    "rezero_skip": lambda: Scale(0.0, on="skip"),
    "layerscale_skip": lambda: Scale(1e-5, per_channel=True, on="skip"),
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
    "Film",
    "Gate",
    "Merge",
    "Mul",
    "Scale",
    "StartsAsBranch",
    "TanhGate",
    "WeightedSum",
    "channel_transform",
    "resolve_merge",
]
