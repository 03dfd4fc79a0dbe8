"""Fully connected nets: plain, residual and highway (the seeds' examples as models).

::

    x ─ stem: Linear(in, width) ─ act ─ [depth blocks] ─ head: Linear(width, out) ─> y

    plain block:     h ─ Linear ─ [norm] ─ act ─ [dropout] ─>
    residual block:  h ─┬─ Linear ─ [norm] ─ act ─ [dropout] ─(+)─>          (skipkit.Residual)
                        └─────────────────────────────────────┘
    highway block:   T·H(h) + (1 − T)·h,  T = σ(W_T h + b_T)                 (skipkit.Highway)

All three share the same layers and ``state_dict`` keys (``stem.0``, ``blocks.<i>.body.0``,
``head``); the highway net adds ``blocks.<i>.merge.transform`` (its gates). ``residual_mlp(
skip=False)`` and ``highway_mlp(skip=False)`` build ``plain_mlp``: the plain twin Srivastava et
al. and He et al. compare against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.models._blocks import Plain
from skipkit.models._registry import register_model
from skipkit.skips import ACTIVATIONS, Highway, Residual

ActivationSpec = str | Callable[[], nn.Module]
NormSpec = str | Callable[[int], nn.Module] | None

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


def highway_gate_bias(depth: int) -> float:
    """Initial transform-gate bias for a highway net of ``depth`` layers.

    Srivastava et al. 2015 used -1, -2, -3 for depths of about 10, 20, 30: ``-depth / 10``
    rounded, at least -1; beyond 30 layers it stays at -3, the largest value the paper
    names (pass ``gate_bias=`` to choose another).
    """
    return -float(min(3, max(1, round(depth / 10))))


def _activation(spec: ActivationSpec) -> nn.Module:
    if isinstance(spec, str):
        if spec not in ACTIVATIONS:
            raise ValueError(f"unknown activation {spec!r}; use one of {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[spec]()
    if isinstance(spec, nn.Module):
        raise TypeError(
            "activation must be a name or a factory (e.g. nn.GELU), not a module instance, "
            "so that every block gets its own"
        )
    if callable(spec):
        module = spec()
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"activation must be a name or an nn.Module factory, got {spec!r}")


def _norm(spec: NormSpec, width: int) -> list[nn.Module]:
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec not in _NORMS:
            raise ValueError(f"unknown norm {spec!r}; use None, {sorted(_NORMS)} or a factory")
        return [_NORMS[spec](width)]
    return [spec(width)]


class MLP(nn.Module):
    """``(N, in_features) -> (N, out_features)`` through ``depth`` blocks of ``width``.

    Build it with :func:`plain_mlp`, :func:`residual_mlp` or :func:`highway_mlp`.
    Submodules: ``stem`` (``Linear(in, width)`` + activation), ``blocks`` (``depth`` blocks:
    :class:`~skipkit.models._blocks.Plain`, :class:`~skipkit.Residual` or
    :class:`~skipkit.Highway` around ``Linear ─ [norm] ─ act ─ [dropout]``), ``head``
    (``Linear(width, out)``).
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        depth: int,
        width: int,
        kind: str = "plain",
        activation: ActivationSpec = "relu",
        norm: NormSpec = None,
        dropout: float = 0.0,
        merge: str | Merge = "add",
        gate_bias: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value < 1:
                raise ValueError(f"MLP({name}={value}) must be positive")
        if depth < 0 or width < 1:
            raise ValueError(f"MLP(depth={depth}, width={width}) needs depth >= 0, width >= 1")
        if kind not in ("plain", "residual", "highway"):
            raise ValueError(f"MLP(kind={kind!r}) must be 'plain', 'residual' or 'highway'")
        self.kind, self.depth, self.width = kind, depth, width
        self.stem = nn.Sequential(nn.Linear(in_features, width), _activation(activation))
        bias = highway_gate_bias(depth) if gate_bias is None else float(gate_bias)
        blocks: list[nn.Module] = []
        for _ in range(depth):
            layers = [nn.Linear(width, width), *_norm(norm, width), _activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            body = nn.Sequential(*layers)
            if kind == "residual":
                # in_shape plans the (identity) shortcut and any merge parameters right now;
                # batch 2 because the dry run is in training mode and BatchNorm1d rejects 1.
                blocks.append(Residual(body, merge=merge, in_shape=(2, width), layout="NF"))
            elif kind == "highway":
                blocks.append(Highway(body, gate_bias=bias, in_shape=(2, width), layout="NF"))
            else:
                blocks.append(Plain(body))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (N, width)
        return self.head(self.blocks(h))  # (N, out_features)


@register_model
def plain_mlp(
    *,
    in_features: int,
    out_features: int,
    depth: int = 8,
    width: int = 64,
    activation: ActivationSpec = "relu",
    norm: NormSpec = None,
    dropout: float = 0.0,
) -> MLP:
    """A plain fully connected net: ``depth`` hidden ``Linear(width, width)`` layers, no skips.

    ``(N, in_features) -> (N, out_features)``; ``depth + 2`` Linear layers in all.
    ``norm``: ``None``, ``"batch"``, ``"layer"`` or a factory ``f(width) -> nn.Module``.
    """
    return MLP(
        in_features=in_features,
        out_features=out_features,
        depth=depth,
        width=width,
        activation=activation,
        norm=norm,
        dropout=dropout,
    )


@register_model
def residual_mlp(
    *,
    in_features: int,
    out_features: int,
    depth: int = 8,
    width: int = 64,
    activation: ActivationSpec = "relu",
    norm: NormSpec = None,
    dropout: float = 0.0,
    merge: str | Merge = "add",
    skip: bool = True,
) -> MLP:
    """A residual fully connected net: ``h + act(norm(W h + b))`` per block (seed 000, 003).

    ``(N, in_features) -> (N, out_features)``. ``merge`` picks how each skip joins (``"add"``,
    ``"rezero"``, ``"layerscale"``, ...). ``skip=False`` builds :func:`plain_mlp` (same keys).
    """
    return MLP(
        in_features=in_features,
        out_features=out_features,
        depth=depth,
        width=width,
        kind="residual" if skip else "plain",
        activation=activation,
        norm=norm,
        dropout=dropout,
        merge=merge,
    )


@register_model
def highway_mlp(
    *,
    in_features: int,
    out_features: int,
    depth: int = 8,
    width: int = 64,
    activation: ActivationSpec = "relu",
    norm: NormSpec = None,
    dropout: float = 0.0,
    gate_bias: float | None = None,
    skip: bool = True,
) -> MLP:
    """A highway net (Srivastava et al. 2015): ``T·H(h) + (1 − T)·h`` per block.

    ``(N, in_features) -> (N, out_features)``. ``gate_bias`` (the transform gate's initial
    bias) defaults to :func:`highway_gate_bias` of ``depth``. ``skip=False`` builds
    :func:`plain_mlp` (no carry path and no gates: the plain net of the paper), the same
    function a highway net computes under :func:`skipkit.skips_disabled`.
    """
    return MLP(
        in_features=in_features,
        out_features=out_features,
        depth=depth,
        width=width,
        kind="highway" if skip else "plain",
        activation=activation,
        norm=norm,
        dropout=dropout,
        gate_bias=gate_bias,
    )


__all__ = ["MLP", "highway_gate_bias", "highway_mlp", "plain_mlp", "residual_mlp"]
