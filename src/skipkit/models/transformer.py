"""Transformers whose residual stream is a skipkit skip: decoder-only LM and encoder classifier.

::

    idx (N, T) ─ tok_emb + pos_emb ─ [expand_streams] ─ depth × block ─ [reduce_streams]
        ─ norm ─ head                       ─> (N, T, vocab)  (transformer_lm, causal)
                 ─ pool over T ─ head      ─> (N, classes)   (transformer_classifier)

    block:  h ─ skip(attention) ─ skip(mlp) ─>

    residual="add"         Residual(f, norm, norm_at)         pre:  h + f(LN(h))
                                                              post: LN(h + f(h))
    residual="rezero"      Residual(f, merge="rezero")        h + α f(LN(h)),  α = 0 at init
    residual="layerscale"  Residual(f, merge="layerscale")    h + γ ⊙ f(LN(h)), γ = 1e-5
    residual="deepnorm"    post-norm, skip × alpha, branch init gain beta (skipkit.deepnorm)
    residual="hyper"       HyperConnection(f, streams, norm)  S streams (Zhu et al.)
    residual="mhc"         HyperConnection(..., constraint="sinkhorn")   (Xie et al.)

Each attention and MLP sublayer is one skip (``blocks.<i>.attn``, ``blocks.<i>.mlp``; the
sublayer itself is ``.body``, or ``.layer`` for hyper-connections), so the plain twin
(``skip=False``: the same blocks with the skip switched off for good) has the same keys and,
with the same weights, equals the model under :func:`skipkit.skips_disabled`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from skipkit._residual import deepnorm, deepnorm_init_, fixed_skip_weight
from skipkit.merges import Merge
from skipkit.models._registry import register_model
from skipkit.skips import Residual, SkipModule
from skipkit.streams import HyperConnection, expand_streams, reduce_streams

RESIDUALS = ("add", "rezero", "layerscale", "deepnorm", "hyper", "mhc")
POOLS = ("mean", "last")


class Attention(nn.Module):
    """Multi-head self-attention, ``(N, T, D) -> (N, T, D)``, nanoGPT's layout: one fused
    ``qkv`` projection ``Linear(D, 3D)``, ``F.scaled_dot_product_attention``, ``proj``.

    Args:
        width: ``D``.
        heads: number of heads (``D`` must be divisible by it).
        causal: position ``t`` attends to ``<= t`` only.
        dropout: attention dropout (training only).

    ``forward(x, key_padding_mask=None)``: ``key_padding_mask`` ``(N, T)``, ``True`` at
    padding positions (as ``nn.MultiheadAttention``), which no query attends to.
    """

    def __init__(self, width: int, heads: int, *, causal: bool, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Attention(width={width}, heads={heads}): width % heads must be 0")
        self.width, self.heads, self.causal, self.dropout = width, heads, causal, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 × (N, T, D)
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # (N, 1, 1, T): True = attend
            if self.causal:
                mask = mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None,
        )  # (N, H, T, D/H)
        return self.proj(y.transpose(1, 2).reshape(n, t, d))

    @torch.no_grad()
    def reset_deepnorm_(self, beta: float) -> None:
        """DeepNorm init: Xavier-normal, gain 1 for the q/k rows of ``qkv`` and ``beta`` for
        its v rows and for ``proj``; zero biases."""
        d = self.width
        nn.init.xavier_normal_(self.qkv.weight[: 2 * d], gain=1.0)
        nn.init.xavier_normal_(self.qkv.weight[2 * d :], gain=beta)
        nn.init.xavier_normal_(self.proj.weight, gain=beta)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)


class MLP(nn.Module):
    """``(N, T, D) -> (N, T, D)``: ``fc`` ``Linear(D, ratio·D)``, GELU, ``proj``, dropout."""

    def __init__(self, width: int, *, ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(width, ratio * width)
        self.act = nn.GELU()
        self.proj = nn.Linear(ratio * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """One transformer block: ``attn`` then ``mlp``, each a :class:`~skipkit.SkipModule`.

    ``(N, T, D) -> (N, T, D)``, or ``(N, T, S, D) -> (N, T, S, D)`` on the stream tensor of
    hyper-connections. ``key_padding_mask`` goes to the attention only.
    """

    def __init__(self, attn: SkipModule, mlp: SkipModule) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(
        self, h: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.attn(h, key_padding_mask=key_padding_mask)
        out: torch.Tensor = self.mlp(h)
        return out


def _wrap(
    f: nn.Module,
    *,
    residual: str,
    norm_at: str,
    index: int,
    depth: int,
    streams: int,
    dynamic: bool,
    width: int,
) -> SkipModule:
    if residual in ("hyper", "mhc"):
        constraint = "sinkhorn" if residual == "mhc" else None
        return HyperConnection(
            f,
            streams,
            layer_index=index,
            dynamic=dynamic,
            constraint=constraint,
            norm="layer",
            dim=width,
        )
    if residual == "deepnorm":
        dn = deepnorm(depth)
        deepnorm_init_(f, dn.beta)
        merge: str | Merge = fixed_skip_weight(dn.alpha)
        place = "post"
    else:
        merge, place = residual, norm_at
    # in_shape plans every part now (a dry run on the meta device), so the model has all its
    # parameters before an optimizer or load_state_dict sees it
    return Residual(
        f, merge=merge, norm="layer", norm_at=place, shortcut="identity", in_shape=(1, 2, width)
    )


class Transformer(nn.Module):
    """A transformer over token ids ``(N, T)`` whose skips are chosen by ``residual``.

    Build it with :func:`transformer_lm` or :func:`transformer_classifier` (see the module
    docstring for the variants). ``forward(idx, key_padding_mask=None)``: ``idx`` ``(N, T)``
    int64 with ``T <= context``; returns ``(N, T, out)`` (``pool=None``) or ``(N, out)``.

    Submodules: ``tok_emb``, ``pos_emb``, ``blocks`` (``depth`` × :class:`Block`), ``norm``
    (the final LayerNorm), ``head``.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        context: int,
        out_features: int,
        depth: int,
        width: int,
        heads: int,
        causal: bool,
        pool: str | None,
        residual: str = "add",
        norm_at: str | None = None,
        skip: bool = True,
        streams: int = 4,
        dynamic: bool = True,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("context", context),
            ("depth", depth),
            ("width", width),
            ("heads", heads),
        ):
            if value < 1:
                raise ValueError(f"transformer: {name}={value} must be >= 1")
        if residual not in RESIDUALS:
            raise ValueError(f"transformer: residual={residual!r}; choose one of {RESIDUALS}")
        place = norm_at or ("post" if residual == "deepnorm" else "pre")
        if residual == "deepnorm" and place != "post":
            raise ValueError(
                f"transformer: residual='deepnorm' is post-norm; got norm_at={norm_at!r} "
                "(leave it unset or pass 'post')"
            )
        if residual in ("hyper", "mhc") and place != "pre":
            raise ValueError(
                f"transformer: residual={residual!r} normalizes each layer's input (pre-norm); "
                f"got norm_at={norm_at!r} (leave it unset or pass 'pre')"
            )
        if pool is not None and pool not in POOLS:
            raise ValueError(f"transformer_classifier: pool={pool!r}; choose one of {POOLS}")
        self.context, self.pool, self.residual, self.norm_at = context, pool, residual, place
        self.streams = streams if residual in ("hyper", "mhc") else 1
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(context, width)
        wrap = functools.partial(
            _wrap,
            residual=residual,
            norm_at=place,
            depth=depth,
            streams=streams,
            dynamic=dynamic,
            width=width,
        )
        blocks = [
            Block(
                wrap(Attention(width, heads, causal=causal, dropout=dropout), index=2 * i),
                wrap(MLP(width, ratio=mlp_ratio, dropout=dropout), index=2 * i + 1),
            )
            for i in range(depth)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features)
        self._init_weights(skip_deepnorm=residual == "deepnorm")
        if not skip:  # the plain twin: the same blocks with the skip off for good
            for m in self.modules():
                if isinstance(m, SkipModule):
                    m.skip_enabled = False

    @torch.no_grad()
    def _init_weights(self, *, skip_deepnorm: bool) -> None:
        """GPT-2's init (normal, std 0.02; zero biases), the residual projections scaled by
        ``1/sqrt(2·depth)``; DeepNorm's branches keep their own init."""
        scale = 1.0 / math.sqrt(2 * len(self.blocks))
        for name, m in self.named_modules():
            if skip_deepnorm and name.startswith("blocks."):
                continue
            if isinstance(m, nn.Linear | nn.Embedding):
                std = 0.02 * (scale if name.endswith(".proj") else 1.0)
                nn.init.normal_(m.weight, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self, idx: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"transformer: sequence length {t} > context {self.context}")
        pos = torch.arange(t, device=idx.device)
        h = self.tok_emb(idx) + self.pos_emb(pos)  # (N, T, D)
        if self.streams > 1:
            h = expand_streams(h, self.streams)  # (N, T, S, D)
        for block in self.blocks:
            h = block(h, key_padding_mask=key_padding_mask)
        if self.streams > 1:
            h = reduce_streams(h)  # (N, T, D)
        h = self.norm(h)
        if self.pool == "mean":
            if key_padding_mask is None:
                h = h.mean(dim=1)
            else:
                keep = (~key_padding_mask).unsqueeze(-1).to(h.dtype)  # (N, T, 1)
                h = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        elif self.pool == "last":
            h = h[:, -1]
        out: torch.Tensor = self.head(h)
        return out


@register_model
def transformer_lm(
    *,
    vocab_size: int,
    context: int,
    depth: int = 4,
    width: int = 64,
    heads: int = 4,
    residual: str = "add",
    norm_at: str | None = None,
    skip: bool = True,
    streams: int = 4,
    dynamic: bool = True,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> Transformer:
    """A decoder-only (causal) language model: ``(N, T) -> (N, T, vocab_size)`` logits.

    ``residual``: ``"add" | "rezero" | "layerscale" | "deepnorm" | "hyper" | "mhc"``;
    ``norm_at``: ``"pre"`` (the default), ``"post"`` or ``"sandwich"`` for the single-stream
    kinds (``"deepnorm"`` is post-norm, ``"hyper"``/``"mhc"`` pre-norm); ``streams`` and
    ``dynamic`` configure hyper-connections. ``skip=False`` builds the plain twin.
    """
    return Transformer(
        vocab_size=vocab_size,
        context=context,
        out_features=vocab_size,
        depth=depth,
        width=width,
        heads=heads,
        causal=True,
        pool=None,
        residual=residual,
        norm_at=norm_at,
        skip=skip,
        streams=streams,
        dynamic=dynamic,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
    )


@register_model
def transformer_classifier(
    *,
    vocab_size: int,
    context: int,
    num_classes: int,
    depth: int = 4,
    width: int = 64,
    heads: int = 4,
    residual: str = "add",
    norm_at: str | None = None,
    skip: bool = True,
    streams: int = 4,
    dynamic: bool = True,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
    pool: str = "mean",
    causal: bool = False,
) -> Transformer:
    """An encoder (bidirectional unless ``causal``) classifier: ``(N, T) -> (N, num_classes)``,
    pooled over positions (``pool="mean"``, padding excluded, or ``"last"``). Other options
    as :func:`transformer_lm`; it trains with :class:`skipkit.train.Trainer` as is."""
    return Transformer(
        vocab_size=vocab_size,
        context=context,
        out_features=num_classes,
        depth=depth,
        width=width,
        heads=heads,
        causal=causal,
        pool=pool,
        residual=residual,
        norm_at=norm_at,
        skip=skip,
        streams=streams,
        dynamic=dynamic,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
    )


__all__ = [
    "MLP",
    "POOLS",
    "RESIDUALS",
    "Attention",
    "Block",
    "Transformer",
    "transformer_classifier",
    "transformer_lm",
]
