"""The hand-written autograd Functions behind :mod:`skipkit.streams`.

Each computes the same numbers as the plain PyTorch expression it replaces, with a backward
written out to save time and memory on the stream tensor ``(N, *, S, D)`` (the docstrings say
what autograd would do instead). They are separate from the modules that use them
(:class:`~skipkit.streams.StreamMix`, :class:`~skipkit.streams.HyperConnection`) because a
reader of a hyper-connection's formula does not need its gradients, and these need their own
gradient checks (``tests/test_streams.py``).
"""

from __future__ import annotations

from typing import Any

import torch


class _SinkhornRounds(torch.autograd.Function):
    """``iters`` rounds of ``m / m.sum(1)`` (rows) then ``m / m.sum(0)`` (columns) on
    ``(S, S, B)``, with the exact gradient of the unrolled rounds written out: for
    ``y = x / sum(x)``, ``dx = (dy - sum(dy * y)) / sum(x)``. Autograd's version records two
    nodes per half-round (120 for 30 rounds) and runs several ops per node backwards; this
    one runs four ops per half-round and records no graph. Each half-round multiplies by the
    reciprocal of the sums (a ``(S, 1, B)`` tensor) instead of dividing the full tensor by
    them: a division costs about twice a product here."""

    @staticmethod
    def forward(ctx: Any, k: torch.Tensor, iters: int) -> torch.Tensor:
        m = k
        saved: list[torch.Tensor] = []
        for _ in range(iters):
            for dim in (1, 0):
                inv = m.sum(dim, keepdim=True).reciprocal_()
                m = m * inv
                saved += [m, inv]
        ctx.save_for_backward(*saved)
        return m

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        saved = ctx.saved_tensors
        # updated in place below (autograd's grad must not change), in the (S, S, B) layout
        g = grad.clone(memory_format=torch.contiguous_format)
        for i in range(len(saved) - 2, -1, -2):
            y, inv = saved[i], saved[i + 1]
            dim = 0 if (i // 2) % 2 else 1  # the half-rounds alternate rows (1), columns (0)
            g.sub_((g * y).sum(dim, keepdim=True)).mul_(inv)
        return g, None


class _GradSlot:
    """Where :class:`_StreamRead`'s backward leaves its gradient of the stream tensor for
    :class:`_RmsProjection`'s backward (which always runs after it: the coefficients that
    :class:`_StreamRead` reads come from the projection) to add its own in place: the two
    full-size gradients of ``H`` are never summed out of place."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None


class _RmsProjection(torch.autograd.Function):
    """``rms_norm(H) W`` as ``(H W) * r`` with ``r = rsqrt(mean(H^2) + eps)`` ``(N, *, S, 1)``:
    the same numbers without the normalised ``(N, *, S, D)`` copy of the streams, and a
    backward with one full-size pass for the norm (``dH = dP W^T + c H``, ``c = -r^3
    sum(dZ P) / D``) where autograd makes three (the norm's backward product, its mask for
    zero norms, and the sum of the two gradients of ``H``). With a :class:`_GradSlot` holding
    another gradient of ``H``, both terms are added to that one in place."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, w: torch.Tensor, slot: _GradSlot | None = None
    ) -> torch.Tensor:
        eps = torch.finfo(h.dtype).eps
        sq = torch.linalg.vector_norm(h, dim=-1, keepdim=True).square_()
        r = sq.div_(h.shape[-1]).add_(eps).rsqrt_()  # (N, *, S, 1)
        p = torch.matmul(h, w)  # (N, *, S, K)
        ctx.slot = slot
        ctx.save_for_backward(h, w, p, r)
        return p * r

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        h, w, p, r = ctx.saved_tensors
        gp = grad * r  # (N, *, S, K)
        c = (grad * p).sum(-1, keepdim=True).mul_(r.pow(3)).mul_(-1.0 / h.shape[-1])
        # under autocast p (and h) may be half precision: compute in gp's dtype, autograd casts
        # the results back to the inputs' dtypes
        h_, w_ = h.to(gp.dtype), w.to(gp.dtype)
        d, k = h.shape[-1], w.shape[-1]
        base = None
        if ctx.slot is not None:
            base, ctx.slot.grad = ctx.slot.grad, None
        if base is None:
            gh = torch.matmul(gp, w_.mT)
        else:  # _StreamRead's dH (contiguous, from a product): add to it in place
            gh = base.to(gp.dtype)
            gh.view(-1, d).addmm_(gp.reshape(-1, k), w_.mT)
        gh = gh.view(h.shape).addcmul_(h_, c)
        gw = h_.reshape(-1, d).mT @ gp.reshape(-1, k)  # (D, K)
        return gh, gw, None


class _StreamRead(torch.autograd.Function):
    """The layer input and the mixed streams from one ``(S + 1, S) @ (S, D)`` product per
    token: ``M^T`` ``(B, S + 1, S)`` (row 0 ``a_m``, rows ``1..S`` ``A_r^T``) and ``H``
    ``(B, S, D)`` give ``a_m^T H`` ``(B, D)`` and ``A_r^T H`` ``(B, S, D)``.

    Autograd's version (a product, then a split) copies the layer input's gradient next to
    the streams' gradient before reading both again; here ``dM`` is two batched products
    that read ``H`` as it is, and ``dH = A_r dH' + a_m dx^T`` one product and an in-place
    outer product. With a :class:`_GradSlot`, ``dH`` is left there for the projection that
    made the coefficients (:class:`_RmsProjection`) to add its own gradient of ``H``."""

    @staticmethod
    def forward(
        ctx: Any, m_t: torch.Tensor, h: torch.Tensor, slot: _GradSlot | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.bmm(m_t.to(h.dtype), h)  # (B, S + 1, D)
        ctx.slot = slot
        ctx.save_for_backward(m_t, h)
        return out[:, 0].contiguous(), out[:, 1:]

    @staticmethod
    def backward(ctx: Any, g_inp: torch.Tensor, g_mixed: torch.Tensor) -> Any:
        m_t, h = ctx.saved_tensors
        dt = g_mixed.dtype
        h_, m_ = h.to(dt), m_t.to(dt)
        gi = g_inp.to(dt).unsqueeze(-2)  # (B, 1, D)
        d_m = dh = None
        if ctx.needs_input_grad[0]:
            h_t = h_.mT
            d_m = torch.cat([torch.bmm(gi, h_t), torch.bmm(g_mixed, h_t)], dim=-2)  # (B, S+1, S)
        if ctx.needs_input_grad[1]:
            dh = torch.bmm(m_[:, 1:].mT, g_mixed).baddbmm_(m_[:, :1].mT, gi)  # A_r dH' + a_m dx^T
            if ctx.slot is not None:
                ctx.slot.grad = dh
                return d_m, None, None
        return d_m, dh, None


class _StreamWrite(torch.autograd.Function):
    """``H'' + b ⊗ y``: the mixed streams ``(N, *, S, D)`` plus the layer output ``y``
    ``(N, *, D)`` written with the weights ``b`` (``(N, *, S)`` or static ``(S,)``). Autograd's
    ``addcmul`` backward gets ``db`` and ``dy`` from two broadcast products of the full stream
    size and two sums; here they are two batched products, ``db = dZ y`` and ``dy = b^T dZ``,
    each reading ``dZ`` once."""

    @staticmethod
    def forward(ctx: Any, mixed: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(b, y)
        return torch.addcmul(mixed, b.unsqueeze(-1), y.unsqueeze(-2))

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        b, y = ctx.saved_tensors
        # reduce_streams' backward hands the last layer an expanded grad (stride 0 over the
        # streams), which the batched products would copy matrix by matrix
        grad = grad.contiguous()
        # under autocast y may be half precision: compute in grad's dtype, autograd casts the
        # results back to the inputs' dtypes
        b, y = b.to(grad.dtype), y.to(grad.dtype)
        s = grad.shape[-2]
        db = dy = None
        if ctx.needs_input_grad[1]:
            db = torch.matmul(grad, y.unsqueeze(-1)).squeeze(-1)  # (N, *, S)
            if b.dim() == 1:  # static weights: summed over the tokens
                db = db.reshape(-1, s).sum(0)
        if ctx.needs_input_grad[2]:
            # a static b expanded to the batch: a batched product (broadcasting a matrix over
            # it would copy the stream tensor)
            bt = b.expand(*grad.shape[:-1]).unsqueeze(-2)  # (N, *, 1, S)
            dy = torch.matmul(bt, grad).squeeze(-2)  # (N, *, D)
        return grad, db, dy
