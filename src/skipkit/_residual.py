"""What :class:`skipkit.Residual` needs for transformer sublayers: the branch's outputs, self-
attention bodies, norm placement and DeepNorm.

**Outputs.** A body may return a tensor, a tuple ``(main, *rest)`` (an RNN's
``(output, state)``, attention's ``(output, weights)``), a named tuple, a ``dict`` or a Hugging
Face ``ModelOutput``. The skip joins the *main* tensor — the first item of a tuple, the first
tensor value of a mapping (``last_hidden_state`` for most ``ModelOutput`` s) — and every other
item passes through unchanged, in a container of the same type: :func:`main_output` picks it,
:func:`replace_main` puts the merged tensor back.

**Norm placement** (``x``: ``(N, *, D)``, normalized over the last dim ``D``)::

    pre       y = x + f(norm(x))               (Xiong et al. 2020; GPT-2, LLaMA)
    post      y = norm(x + f(x))               (Vaswani et al. 2017, BERT)
    sandwich  y = x + norm_out(f(norm(x)))     (peri-norm: CogView, Gemma 2)

**DeepNorm** (Wang et al. 2022) is post-norm with the skip weighted by a constant ``alpha``
and the branch's value / output / feed-forward weights initialised with gain ``beta``
(:func:`deepnorm`, :func:`deepnorm_init_`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from skipkit.merges import WeightedSum

NORM_PLACES = ("pre", "post", "sandwich")
NORM_KINDS = ("layer", "rms")


def main_output(out: Any) -> torch.Tensor:
    """The tensor a skip joins: ``out`` itself, a tuple's first item, or a mapping's first
    tensor value.

    Raises:
        TypeError: ``out`` holds no tensor the skip could join.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping):
        return out[_main_key(out)]
    raise TypeError(
        f"the skip's body returned {type(out).__name__}; it must return a tensor, a tuple "
        "(tensor, ...), or a dict / ModelOutput holding a tensor"
    )


def replace_main(out: Any, y: torch.Tensor) -> Any:
    """``out`` with its main tensor (see :func:`main_output`) replaced by ``y``, as the same
    type; everything else is kept as it was."""
    if isinstance(out, torch.Tensor):
        return y
    if isinstance(out, tuple):
        if hasattr(out, "_fields"):  # a named tuple
            return out._replace(**{out._fields[0]: y})  # type: ignore[attr-defined]
        return (y, *out[1:])
    if isinstance(out, Mapping):
        items = dict(out)
        items[_main_key(out)] = y
        # ModelOutput and OrderedDict take their fields as keywords
        return items if type(out) is dict else type(out)(**items)
    raise TypeError(f"cannot put the merged tensor back into a {type(out).__name__}")


def _main_key(out: Mapping[Any, Any]) -> Any:
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            return key
    raise TypeError(f"the body's output {type(out).__name__} holds no tensor (keys {list(out)})")


def self_attention(
    mha: nn.MultiheadAttention,
    x: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    need_weights: bool = False,
    average_attn_weights: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """``mha(x, x, x, ...)``: self-attention. ``x``: ``(N, L, E)`` (``batch_first``) or
    ``(L, N, E)``; the output has the same shape.

    ``is_causal=True`` without ``attn_mask`` builds the causal mask (position ``i`` sees
    ``j <= i``); ``nn.MultiheadAttention`` itself only takes ``is_causal`` as a hint about a
    given mask. Returns the output alone unless ``need_weights`` (then ``(output, weights)``).
    """
    if is_causal and attn_mask is None:
        length = x.shape[1] if mha.batch_first else x.shape[0]
        attn_mask = causal_mask(length, device=x.device)
    out, weights = mha(
        x,
        x,
        x,
        key_padding_mask=key_padding_mask,
        need_weights=need_weights,
        attn_mask=attn_mask,
        average_attn_weights=average_attn_weights,
        is_causal=is_causal,
    )
    return (out, weights) if need_weights else out


def causal_mask(length: int, *, device: torch.device | None = None) -> torch.Tensor:
    """``(L, L)`` boolean mask, ``True`` where attention is *not* allowed (``j > i``)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` as a one-input module (for shape dry runs): ``forward(x)`` is
    :func:`self_attention`. It keeps ``mha`` as ``self.mha``."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        return self_attention(self.mha, x, **kwargs)


class PendingNorm(nn.Module):
    """Stands in for a ``"layer"``/``"rms"`` norm whose width is not known yet; the owning
    :class:`~skipkit.Residual` replaces it at its first forward (or from ``in_shape``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"norm {self.kind!r} has not been built yet (its skip builds it)")

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def check_norm_args(norm: str | nn.Module | None, norm_at: str) -> None:
    """``ValueError``/``TypeError`` naming the argument, the value and the choices."""
    if norm_at not in NORM_PLACES:
        raise ValueError(f"Residual(norm_at={norm_at!r}): choose one of {NORM_PLACES}")
    if norm is None or isinstance(norm, nn.Module):
        if norm_at == "sandwich" and isinstance(norm, nn.Module):
            raise ValueError(
                "Residual(norm=<module>, norm_at='sandwich') needs two norms; pass "
                f"norm='layer' or 'rms' (each side gets its own), not one {type(norm).__name__}"
            )
        return
    if not isinstance(norm, str):
        raise TypeError(
            f"Residual(norm=...) must be None, 'layer', 'rms' or an nn.Module, got "
            f"{type(norm).__name__}"
        )
    if norm not in NORM_KINDS:
        raise ValueError(f"Residual(norm={norm!r}): choose one of {NORM_KINDS} or an nn.Module")


def make_norm(kind: str, width: int, *, device: Any = None, dtype: Any = None) -> nn.Module:
    """``nn.LayerNorm(width)`` (``"layer"``) or ``nn.RMSNorm(width)`` (``"rms"``), over the
    last dim of ``(N, *, width)``."""
    if kind == "layer":
        return nn.LayerNorm(width, device=device, dtype=dtype)
    return nn.RMSNorm(width, device=device, dtype=dtype)


def norm_or_pending(
    norm: str | nn.Module, width: int | None, *, ref: torch.Tensor | None = None
) -> nn.Module:
    """The norm module now when its width is known, else a :class:`PendingNorm`."""
    if isinstance(norm, nn.Module):
        return norm
    if width is None:
        return PendingNorm(norm)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else None
    return make_norm(norm, width, device=ref.device if ref is not None else None, dtype=dtype)


def body_widths(body: nn.Module) -> tuple[int | None, int | None]:
    """``(input width, output width)`` of a features-last body when its first / last layer
    tells (``nn.MultiheadAttention``'s ``embed_dim``, ``nn.Linear``'s sizes), else ``None``."""
    if isinstance(body, nn.MultiheadAttention):
        return body.embed_dim, body.embed_dim
    leaves = [m for m in body.modules() if not list(m.children())]
    first = leaves[0] if leaves else None
    last = leaves[-1] if leaves else None
    width_in = first.in_features if isinstance(first, nn.Linear) else None
    width_out = last.out_features if isinstance(last, nn.Linear) else None
    return width_in, width_out


@dataclasses.dataclass(frozen=True)
class DeepNorm:
    """DeepNorm's constants for ``depth`` residual sublayers' worth of layers.

    Attributes:
        alpha: the skip's weight in ``y = LN(alpha * x + f(x))``.
        beta: the init gain of the branch's value, output and feed-forward weights.
    """

    alpha: float
    beta: float


def deepnorm(depth: int) -> DeepNorm:
    """DeepNorm (Wang et al. 2022, "DeepNet") for an encoder-only or decoder-only transformer
    of ``depth`` layers (``N`` in the paper): ``alpha = (2N)^(1/4)``, ``beta = (8N)^(-1/4)``.

    Use it as ``Residual(f, merge=<weighted sum with skip weight alpha, fixed>,
    norm="layer", norm_at="post")`` with ``f``'s weights initialised by
    :func:`deepnorm_init_` (``skipkit.models.create("transformer_lm", residual="deepnorm")``
    does both).
    """
    if depth < 1:
        raise ValueError(f"deepnorm(depth={depth}) needs depth >= 1 (the number of layers)")
    return DeepNorm(alpha=(2.0 * depth) ** 0.25, beta=(8.0 * depth) ** -0.25)


@torch.no_grad()
def deepnorm_init_(branch: nn.Module, beta: float) -> None:
    """DeepNorm's init of a branch: Xavier-normal with gain ``beta`` for the feed-forward,
    attention-output and value projections, gain 1 for the query and key projections.

    A module with a ``reset_deepnorm_(beta)`` method (e.g. an attention with a fused qkv
    projection) initialises itself; ``nn.MultiheadAttention``'s packed ``in_proj_weight`` gets
    gain 1 on its q/k rows and ``beta`` on its v rows; every other ``nn.Linear`` gets ``beta``.
    Biases start at zero.
    """
    done: set[int] = set()
    for m in branch.modules():
        if id(m) in done:
            continue
        reset = getattr(m, "reset_deepnorm_", None)
        if callable(reset):
            reset(beta)
            done.update(id(s) for s in m.modules())
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            e = m.embed_dim
            nn.init.xavier_normal_(m.in_proj_weight[: 2 * e], gain=1.0)
            nn.init.xavier_normal_(m.in_proj_weight[2 * e :], gain=beta)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=beta)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def fixed_skip_weight(alpha: float) -> WeightedSum:
    """The DeepNorm merge ``y = alpha * skip + branch`` with ``alpha`` a constant (a
    :class:`~skipkit.merges.WeightedSum` whose weights do not train)."""
    merge = WeightedSum(alpha, 1.0)
    merge.weights.requires_grad_(False)
    return merge
