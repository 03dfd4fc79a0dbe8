"""Gate merges: :class:`Gate` (Highway) and :class:`TanhGate` (starts closed), split from
:mod:`skipkit.merges`, which re-exports them with the other merges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from skipkit._checks import check_finite
from skipkit._merge import Merge, StartsAsBranch
from skipkit.shapes import Layout, channel_dim, resolve_layout
from skipkit.shortcuts import pointwise


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


class _SkipTransform(Merge):
    """A merge with a learned per-position map of the skip, ``W s + c`` (:func:`channel_transform`),
    made in :meth:`setup` once the shapes are known; ``c`` starts at :attr:`bias`, ``W`` at
    zero when :attr:`zero_weight`."""

    bias: float = 0.0
    zero_weight: bool = False

    def __init__(self) -> None:
        super().__init__()
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
                branch_shape,
                layout,
                bias=self.bias,
                zero_weight=self.zero_weight,
                device=device,
                dtype=dtype,
            )


class Gate(_SkipTransform):
    """Highway gate (Srivastava et al. 2015): ``y = T(s)*b + (1 - T(s))*s``.

    ``T(s) = sigmoid(W_T s + b_T)`` with a 1×1 conv (channels first) or ``nn.Linear``; the bias
    starts at ``bias`` (negative: the block starts by carrying its input; -1, -2, -3 suit
    depths of about 10, 20, 30). Shapes: ``(N, *S), (N, *S) -> (N, *S)``.

    Without the skip (the plain twin) the gate goes with it: ``y = b``, the plain network
    Srivastava et al. compare highways against.
    """

    _name = "gate"
    _formula = "T*b + (1 - T)*s, T = sigmoid(W s + c)"
    # T never reaches 1: the gate always passes part of the skip
    starts_as_branch: StartsAsBranch = "never"

    def __init__(self, bias: float = -2.0) -> None:
        super().__init__()
        self.bias = check_finite("Gate(bias)", bias)

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


class TanhGate(_SkipTransform):
    """A gate that starts closed: ``y = b + tanh(W s + c) * s``; shapes ``(N, *S), (N, *S)``.

    ``W`` (1×1 conv or ``nn.Linear`` on the channel dim) and ``c`` start at zero, so
    ``y = b`` at step 0, as in Flamingo's tanh-gated cross-attention, but the gate depends on
    the skip per position like a Highway gate. ``dL/dc = g * s`` is not zero, so it opens as
    it learns. Without the skip: ``b``.
    """

    _name = "tanh_gate"
    _formula = "b + tanh(W s + c) * s"
    starts_as_branch: StartsAsBranch = "by_own_parameters"

    bias = 0.0
    zero_weight = True

    def start_as_branch(self) -> None:
        """Close the gate again: ``W = 0, c = 0``."""
        assert self.transform is not None, "TanhGate used before setup()"
        for p in self.transform.parameters():
            nn.init.zeros_(p)

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if skip.shape != branch.shape:
            self._check(tuple(skip.shape), tuple(branch.shape))
        assert self.transform is not None, "TanhGate used before setup()"
        return branch + torch.tanh(self.transform(skip)) * skip


__all__ = ["Gate", "TanhGate", "channel_transform"]
