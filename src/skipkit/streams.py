"""Multi-stream residuals: hyper-connections (Zhu et al., ICLR 2025) and their manifold-
constrained form mHC (Xie et al., DeepSeek, 2025).

The residual stream is widened to ``S`` streams. The **stream tensor** ``H`` has the shape
``(N, *, S, D)``: the streams sit in the second-to-last dim, the model width ``D`` last (so a
sequence is ``(N, T, S, D)``). :func:`expand_streams` makes ``S`` copies of ``(N, *, D)`` at
the bottom of the network, :func:`reduce_streams` averages them back at the top. Each layer
``f`` is wrapped in a :class:`HyperConnection`::

          H (N,*,S,D) ──┬──────── shortcut: A_r^T H  (stream mixing) ────────┐
                        │                                                     (+)── H'
                        └─ a_m^T H ─ [norm] ─ f ─ b ⊗ f(·)  (depth conn.) ────┘
                           (width conn.: one (N,*,D) input from the S streams)

    H'_j = sum_i A_r[i, j] H_i + b_j f(norm(sum_i a_m[i] H_i))

with ``a_m`` (``S``), ``b`` (``S``) and ``A_r`` (``S x S``) learned: static parameters, plus,
when ``dynamic``, a token-dependent part ``s * tanh(norm(H) W)`` whose ``W`` starts at zero.

- ``constraint=None`` (HC): ``a_m``, ``b``, ``A_r`` are unconstrained. Init as Zhu et al.:
  ``a_m = e_(layer_index mod S)``, ``A_r = I``, ``b = 1``.
- ``constraint="sinkhorn"`` (mHC): ``A_r = Sinkhorn(exp(2 tanh(logits / 2)))`` (rows and
  columns sum to 1: a doubly stochastic matrix, so the mixing neither amplifies nor loses the
  residual signal, and a product over depth stays doubly stochastic), ``b = 2 sigmoid(logits)``
  (non-negative, 1 at init) and ``a_m = softmax(logits)`` (non-negative, summing to 1; mHC
  uses a sigmoid here, we use a softmax so the layer input is a convex combination of the
  streams). The ``2 tanh(· / 2)`` bound and the 30 rounds (mHC: 20) are ours: unbounded
  logits can drift to where 100 rounds are not enough. Within the bound, 30 rounds leave row
  sums within 1e-3 of 1 for logits spread as training spreads them (measured, 4 streams:
  3e-5 worst of 20,000 standard-normal matrices, 2e-5 uniform in [-2, 2]), not for every
  logit matrix the bound allows: the worst sign patterns of +-1.81 (the init's magnitude)
  leave 1.2e-3, of +-1.99 2.6e-3 (measured over 50,000). The price of the bound: no entry
  of ``A_r`` gets closer to 1 than about 0.95 (4 streams).

At initialisation every stream holds the same tensor (``expand_streams`` copies; every map
above keeps equal streams equal and gives the layer exactly the one stream), so a
hyper-connected network computes the single-stream pre-norm network with the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from skipkit._residual import main_output, make_norm, replace_main
from skipkit._streams_autograd import (
    _GradSlot,
    _RmsProjection,
    _SinkhornRounds,
    _StreamRead,
    _StreamWrite,
)
from skipkit.merges import Add
from skipkit.skips import SkipModule

CONSTRAINTS = (None, "sinkhorn")
SINKHORN_ITERS = 30  # mHC uses 20; see the module docstring for the measured row errors
LOGIT_BOUND = 2.0  # mHC's mixing logits are squashed into [-2, 2] before Sinkhorn
_DYNAMIC_SCALE = 0.01  # Zhu et al.'s initial s_alpha, s_beta


def expand_streams(x: torch.Tensor, streams: int) -> torch.Tensor:
    """``(N, *, D) -> (N, *, S, D)``: ``S`` copies of ``x`` (a view, no memory)."""
    if streams < 1:
        raise ValueError(f"expand_streams(streams={streams}) needs streams >= 1")
    return x.unsqueeze(-2).expand(*x.shape[:-1], streams, x.shape[-1])


def reduce_streams(h: torch.Tensor) -> torch.Tensor:
    """``(N, *, S, D) -> (N, *, D)``: the mean of the streams.

    Zhu et al. sum the streams; the mean is the sum divided by ``S``, which a following norm
    does not see, and it makes a freshly initialised multi-stream network equal to its
    single-stream twin without that norm.
    """
    return h.mean(dim=-2)


def sinkhorn(logits: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """``(*, S, S)`` logits -> the doubly stochastic matrix ``Sinkhorn-Knopp(exp(logits))``.

    ``exp`` (after subtracting each matrix's largest logit, which the result does not depend
    on), then ``iters`` rounds of row and column normalisation (mHC: 20; ours: 30). Columns
    sum to 1 exactly, rows to within what convergence leaves after ``iters`` rounds. Measured
    worst row error over 20,000 matrices of 4 streams after 30 rounds: 3e-5 for
    standard-normal logits, 2e-5 for logits uniform in [-2, 2], 3e-3 for the adversarial
    pattern of logits at exactly +-2 (20 rounds: 7e-4, 3e-4, 6e-3). Logits spread far wider
    approach a matrix that no scaling makes doubly stochastic; spread by more than ~80 units
    they underflow. :class:`StreamMix` keeps them within +-2.
    """
    k = (logits - logits.detach().amax(dim=(-2, -1), keepdim=True)).exp()
    return _sinkhorn_scale(k, iters)


def _sinkhorn_scale(k: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """``(*, S, S)`` positive -> its Sinkhorn-Knopp scaling, through :class:`_SinkhornRounds`
    on the ``(S, S, B)`` layout (the ``B`` matrices innermost: with ``S`` innermost every op
    of the ``4 * iters`` would run an inner loop of ``S`` elements)."""
    s = k.shape[-1]
    lead = k.shape[:-2]
    kt = k.reshape(-1, s, s).permute(1, 2, 0).contiguous()  # (S, S, B)
    m: torch.Tensor = _SinkhornRounds.apply(kt, iters)
    return m.permute(2, 0, 1).reshape(*lead, s, s)


def _dynamic(h: torch.Tensor, proj: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The token-dependent logits ``scale * tanh(rms_norm(H) W)``: ``(N, *, S, D)`` with
    ``W`` ``(D, K)`` -> ``(N, *, S, K)``. The RMS norm has no weights (``W`` learns the
    scale)."""
    out: torch.Tensor = _RmsProjection.apply(h, proj)
    return scale * torch.tanh(out)


def _check(streams: int, constraint: str | None, dim: int) -> None:
    if streams < 1:
        raise ValueError(f"HyperConnection(streams={streams}) needs streams >= 1")
    if constraint not in CONSTRAINTS:
        raise ValueError(
            f"HyperConnection(constraint={constraint!r}): choose None (hyper-connections) "
            "or 'sinkhorn' (mHC)"
        )
    if dim < 1:
        raise ValueError(f"HyperConnection(dim={dim}) needs the model width, >= 1")


class StreamMix(nn.Module):
    """The shortcut of a :class:`HyperConnection`: ``(N, *, S, D) -> (N, *, S, D)``,
    ``H'_j = sum_i A_r[i, j] H_i``.

    Args:
        streams: ``S``.
        dim: ``D``, the width (for the dynamic part).
        dynamic: add the token-dependent part ``s * tanh(norm(H_i) W_r)`` to row ``i``.
        constraint: ``None`` (``A_r`` as learned, ``I`` at init) or ``"sinkhorn"`` (``A_r``
            = Sinkhorn of the bounded logits, 0.92 on the diagonal at init).
    """

    def __init__(self, streams: int, dim: int, *, dynamic: bool, constraint: str | None) -> None:
        super().__init__()
        self.streams, self.constraint = streams, constraint
        if constraint == "sinkhorn":
            # +-3 (bounded to +-1.81): about 0.92 on the diagonal after Sinkhorn, with the
            # bound's tanh still far from flat
            init = torch.full((streams, streams), -3.0).fill_diagonal_(3.0)
        else:
            init = torch.eye(streams)
        self.static = nn.Parameter(init)
        self.proj: nn.Parameter | None = None
        self.scale: nn.Parameter | None = None
        if dynamic:
            self.proj = nn.Parameter(torch.zeros(dim, streams))
            self.scale = nn.Parameter(torch.tensor(_DYNAMIC_SCALE))

    def matrix(self, h: torch.Tensor | None = None) -> torch.Tensor:
        """The mixing matrix ``A_r``: ``(S, S)`` (its static part, when ``h`` is ``None`` or
        the mix is static) or ``(N, *, S, S)`` for the stream tensor ``h``."""
        z: torch.Tensor = self.static
        if h is not None and self.proj is not None and self.scale is not None:
            z = z + _dynamic(h, self.proj, self.scale)  # (N, *, S, S)
        return self._from_logits(z)

    def _from_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``A_r`` from its logits ``(*, S, S)`` (static plus dynamic part)."""
        if self.constraint == "sinkhorn":
            # bounded logits need no shift before exp (sinkhorn's amax), and stay where
            # SINKHORN_ITERS rounds converge
            return _sinkhorn_scale(torch.exp(LOGIT_BOUND * torch.tanh(z / LOGIT_BOUND)))
        return z

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # H'_j = sum_i A_r[i, j] H_i, a batched (S, S) @ (S, D) product per token
        return torch.matmul(self.matrix(h).transpose(-2, -1), h)

    def extra_repr(self) -> str:
        return f"streams={self.streams}, dynamic={self.proj is not None}, {self.constraint=}"


def _watched(module: nn.Module) -> bool:
    """Whether forward hooks would see ``module``'s call (its own, or global ones): the fused
    forward of :class:`HyperConnection` never calls its shortcut and merge."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or _global_forward_hooks
        or _global_forward_pre_hooks
    )


class HyperConnection(SkipModule):
    """A hyper-connection (``constraint=None``) or mHC (``"sinkhorn"``) around ``body``.

    ``(N, *, S, D) -> (N, *, S, D)`` on the stream tensor (see the module docstring for the
    formulas and :func:`expand_streams` / :func:`reduce_streams` for the ends); ``body`` maps
    ``(N, *, D) -> (N, *, D)``. Extra ``forward`` arguments (masks) go to ``body``; a body
    returning a tuple / dict keeps its other items, as for :class:`~skipkit.Residual`.

    The protocol's parts: the **shortcut** is the stream mixing :class:`StreamMix`
    (``A_r^T H``), the **branch** is width connection, ``norm``, ``body`` and depth connection
    (``b ⊗ f(...)``), the **merge** is :class:`~skipkit.Add`; with the skip off (the plain
    twin) every stream gets ``b_j f(...)`` and nothing is carried. The wrapped layer is
    :attr:`layer` (not ``body``: the branch reads and writes the streams around it).

    Args:
        body: the layer ``f`` (an attention or MLP sublayer).
        streams: ``S`` (Zhu et al.: 4).
        layer_index: this layer's index in the network; at init it reads stream
            ``layer_index mod S``.
        dynamic: add the token-dependent coefficients (DHC); ``False``: static (SHC).
        constraint: ``None`` or ``"sinkhorn"`` (mHC).
        norm: ``None``, ``"layer"``, ``"rms"`` or a module, applied to the layer input
            (pre-norm) as in :class:`~skipkit.Residual`'s ``norm_at="pre"``.
        dim: the width ``D``; inferred from ``body`` when its first layer tells
            (``nn.Linear``, ``nn.MultiheadAttention``, or a ``dim`` / ``width`` attribute).

    Attributes:
        layer: ``body``.
        norm: the pre-norm or ``None``.
        shortcut: the :class:`StreamMix`.
        pre_logits, post_logits: ``a_m``'s and ``b``'s static parameters (``S``).
        proj, scale: their dynamic part, ``(D, 2)`` and ``(2,)`` (``None`` when static).
    """

    def __init__(
        self,
        body: nn.Module,
        streams: int = 4,
        *,
        layer_index: int,
        dynamic: bool = True,
        constraint: str | None = None,
        norm: str | nn.Module | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"HyperConnection body must be an nn.Module, got {type(body)}")
        width = dim if dim is not None else _width_of(body)
        if width is None:
            raise ValueError(
                f"HyperConnection({type(body).__name__}): cannot tell the width D from the "
                "body; pass dim=D"
            )
        _check(streams, constraint, width)
        if layer_index < 0:
            raise ValueError(f"HyperConnection(layer_index={layer_index}) must be >= 0")
        self.streams, self.dim, self.layer_index = streams, width, layer_index
        self.constraint, self.dynamic = constraint, dynamic
        self.layer = body
        if isinstance(norm, str):
            if norm not in ("layer", "rms"):
                raise ValueError(f"HyperConnection(norm={norm!r}): choose 'layer', 'rms'")
            norm = make_norm(norm, width)
        self.norm: nn.Module | None = norm
        self.shortcut = StreamMix(streams, width, dynamic=dynamic, constraint=constraint)
        self.merge = Add()
        k = layer_index % streams
        if constraint == "sinkhorn":
            # softmax(2 at k, 0 elsewhere): mostly stream k, so the layers of a fresh network
            # read different streams and the streams can drift apart (uniform weights would
            # keep them equal for ever)
            pre = torch.zeros(streams).index_fill_(0, torch.tensor(k), 2.0)
            post = torch.zeros(streams)  # 2 sigmoid(0) = 1
        else:
            pre = torch.zeros(streams).index_fill_(0, torch.tensor(k), 1.0)
            post = torch.ones(streams)
        self.pre_logits = nn.Parameter(pre)
        self.post_logits = nn.Parameter(post)
        # the dynamic part: one (D, 2) projection for the pre (column 0) and post (column 1)
        # maps, and their scales s_alpha, s_beta
        self.proj: nn.Parameter | None = None
        self.scale: nn.Parameter | None = None
        if dynamic:
            self.proj = nn.Parameter(torch.zeros(width, 2))
            self.scale = nn.Parameter(torch.full((2,), _DYNAMIC_SCALE))

    def coefficients(self, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_m, b)``: the width (input) and depth (output) weights, ``(S,)`` each, or
        ``(N, *, S)`` for the stream tensor ``h`` when dynamic."""
        pre: torch.Tensor = self.pre_logits
        post: torch.Tensor = self.post_logits
        if h is not None and self.proj is not None and self.scale is not None:
            dyn = _dynamic(h, self.proj, self.scale)  # (N, *, S, 2)
            pre, post = pre + dyn[..., 0], post + dyn[..., 1]
        return self._from_logits(pre, post)

    def _from_logits(
        self, pre: torch.Tensor, post: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.constraint == "sinkhorn":
            return torch.softmax(pre, dim=-1), 2.0 * torch.sigmoid(post)
        return pre, post

    def _dynamic_coefficients(
        self, mix: StreamMix, raw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a_m, b, A_r)``, ``(..., S)``, ``(..., S)``, ``(..., S, S)``, from the normalised
        projection ``raw = rms_norm(H) W`` ``(..., S, S + 2)`` of one product for all three
        (columns ``:S`` for ``A_r``, ``S`` for ``a_m``, ``S + 1`` for ``b``) and one
        ``tanh``."""
        assert mix.scale is not None and self.scale is not None
        s = self.streams
        dyn = torch.cat([mix.scale.expand(s), self.scale]) * torch.tanh(raw)  # (..., S, S + 2)
        a_r = mix._from_logits(mix.static + dyn[..., :s])
        a_m, b = self._from_logits(
            self.pre_logits + dyn[..., s], self.post_logits + dyn[..., s + 1]
        )
        return a_m, b, a_r

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``(N, *, S, D) -> (N, *, S, D)``: the protocol's ``merge(shortcut(H), branch(H))``
        computed in fewer passes over the stream tensor (the same numbers): the dynamic
        coefficients of both parts from one product, the layer input and the mixed streams
        from one ``(S + 1, S) @ (S, D)`` product per token, the write ``b ⊗ f`` and the sum
        in one ``addcmul``; backwards, the two gradients of ``H`` (through the coefficients
        and through the product) accumulate in one buffer (``_GradSlot``). A replaced part
        (shortcut, merge, post), or a part a forward hook watches (the diagnostics' probes, a
        lesion), takes the protocol's generic path, where each part runs as a module call."""
        mix = self.shortcut
        if (
            not isinstance(mix, StreamMix)
            or type(self.merge) is not Add
            or self.post is not None
            or (mix.proj is None) != (self.proj is None)
            or _watched(mix)
            or _watched(self.merge)
        ):
            return super().forward(x, *args, **kwargs)
        if isinstance(x, tuple):
            x = x[0]
        self._check_streams(x)
        if x.stride(-2) == 0 and self.streams > 1:
            # expand_streams' view: the products below would copy it matrix by matrix (a BLAS
            # matrix cannot have a zero row stride), one copy here is cheaper
            x = x.contiguous()
        s = self.streams
        batch = x.shape[:-2]
        mixed: torch.Tensor | None = None
        if self.skip_enabled:
            flat = x.reshape(-1, s, self.dim)  # (B, S, D)
            slot = None
            if self.proj is not None and self.scale is not None:
                assert mix.proj is not None and mix.scale is not None
                weight = torch.cat([mix.proj, self.proj], dim=1)  # (D, S + 2)
                # one slot: the two gradients of H are summed in place (see _GradSlot)
                slot = None if torch.compiler.is_compiling() else _GradSlot()
                raw = _RmsProjection.apply(flat, weight, slot)
                a_m, b, a_r = self._dynamic_coefficients(mix, raw)
                b = b.view(*batch, s)
            else:  # static: the same (S + 1, S) matrix for every token
                a_m, b = self._from_logits(self.pre_logits, self.post_logits)
                a_r = mix._from_logits(mix.static)
                a_m, a_r = a_m.expand(flat.shape[0], s), a_r.expand(flat.shape[0], s, s)
            # row 0 reads the layer input sum_i a_m[i] H_i, rows 1..S mix: sum_i A_r[i, j] H_i
            m_t = torch.cat([a_m.unsqueeze(-2), a_r.mT], dim=-2)  # (B, S + 1, S)
            h, mixed = _StreamRead.apply(m_t, flat, slot)
            h, mixed = h.view(*batch, -1), mixed.view(*batch, s, -1)
        else:  # the plain twin: nothing is carried, A_r is not needed
            a_m, b = self.coefficients(x)
            h = torch.matmul(a_m.unsqueeze(-2).expand(*batch, 1, s), x).squeeze(-2)
        if self.norm is not None:
            h = self.norm(h)  # (N, *, D)
        out = self.layer(h, *args, **kwargs)
        y = main_output(out)  # (N, *, D)
        if mixed is None:
            new = b.unsqueeze(-1) * y.unsqueeze(-2)
        else:
            new = _StreamWrite.apply(mixed, b, y)  # (N, *, S, D)
        return new if out is y else replace_main(out, new)

    def _check_streams(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[-2] != self.streams or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.path or 'HyperConnection'}: expected a stream tensor (N, *, "
                f"{self.streams}, {self.dim}), got {tuple(x.shape)}; wrap the input with "
                f"skipkit.expand_streams(x, {self.streams})"
            )

    def branch(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``(N, *, S, D) -> (N, *, S, D)``: ``b ⊗ f(norm(a_m^T H))``."""
        self._check_streams(x)
        a_m, b = self.coefficients(x)
        h = torch.matmul(a_m.unsqueeze(-2), x).squeeze(-2)  # (N, *, D): the layer input
        if self.norm is not None:
            h = self.norm(h)
        out = self.layer(h, *args, **kwargs)
        y = main_output(out)  # (N, *, D)
        written = b.unsqueeze(-1) * y.unsqueeze(-2)  # (N, *, S, D)
        return written if out is y else replace_main(out, written)

    def mixing_matrix(self) -> torch.Tensor:
        """The static part of the stream mixing ``A_r``, ``(S, S)``."""
        assert isinstance(self.shortcut, StreamMix)
        return self.shortcut.matrix()

    def extra_repr(self) -> str:
        return (
            f"streams={self.streams}, dim={self.dim}, layer_index={self.layer_index}, "
            f"dynamic={self.dynamic}, constraint={self.constraint!r}"
        )


def _width_of(body: nn.Module) -> int | None:
    for name in ("dim", "width", "embed_dim"):
        value = getattr(body, name, None)
        if isinstance(value, int):
            return value
    first = next((m for m in body.modules() if not list(m.children())), None)
    return first.in_features if isinstance(first, nn.Linear) else None


def composite_gain(layers: list[HyperConnection]) -> list[float]:
    """mHC's stability measure across depth: for ``k = 1..L`` the gain of the composite
    residual mapping ``A_r^(1) A_r^(2) ... A_r^(k)`` (static parts), the larger of its largest
    absolute row sum and column sum (how much the carried signal can grow forwards or
    backwards). A doubly stochastic product has gain 1; unconstrained mixing can drift."""
    gains: list[float] = []
    with torch.no_grad():
        prod: torch.Tensor | None = None
        for hc in layers:
            m = hc.mixing_matrix().detach().float()
            prod = m if prod is None else prod @ m
            a = prod.abs()
            gains.append(float(torch.maximum(a.sum(0).max(), a.sum(1).max())))
    return gains


__all__ = [
    "CONSTRAINTS",
    "HyperConnection",
    "StreamMix",
    "composite_gain",
    "expand_streams",
    "reduce_streams",
    "sinkhorn",
]
