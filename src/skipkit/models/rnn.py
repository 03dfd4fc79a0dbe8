"""Residual LSTM / GRU stacks: a skip around every recurrent layer (batch first).

::

    x (N, T, input_size)
      ─ Residual(LSTM(input_size → H))   shortcut: Linear(input_size, H) when the sizes differ
      ─ [dropout] ─ Residual(LSTM(H → H)) ─ ... (num_layers)          ─> h (N, T, H)
      ─ head

    head="sequence":     h ─ [Linear(H, num_classes) per step]            ─> (N, T, C)
    head="last":         h[:, -1] ─ [Linear(H, num_classes)]              ─> (N, C)
    head="last_concat":  cat([h, Linear(H, H)(h[:, -1]) as one more step], dim=1)
                           ─ [Linear(H, num_classes) per step]            ─> (N, T + 1, C)

``head="last_concat"`` is seed 001's pattern: the last hidden state, linearly projected and
appended to the sequence. The seed projects it to ``input_size`` and so only concatenates when
``input_size == hidden_size``; here it is projected to ``hidden_size`` so the shapes always fit.
``C`` is ``hidden_size`` when ``num_classes`` is ``None``.

``skip=False`` builds the plain stack (the same recurrent layers, no shortcuts, no input
projection), whose keys are the residual stack's minus the shortcuts.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from skipkit.models._registry import register_model
from skipkit.skips import Residual, plain_residual

Head = Literal["sequence", "last", "last_concat"]
_CELLS: dict[str, type[nn.LSTM | nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class ResidualRNN(nn.Module):
    """A stack of ``num_layers`` single-layer LSTMs or GRUs with a skip around each.

    ``(N, T, input_size) ->`` ``(N, T, C)`` / ``(N, C)`` / ``(N, T + 1, C)`` for
    ``head="sequence"`` / ``"last"`` / ``"last_concat"`` (see the module docstring).

    Submodules: ``layers`` (:class:`~skipkit.Residual` or, for ``skip=False``,
    :func:`~skipkit.skips.plain_residual` around each ``nn.LSTM``/``nn.GRU``; the recurrent
    layer is ``layers.<i>.body``), ``last_proj`` (``"last_concat"`` only), ``fc`` (when
    ``num_classes`` is set).
    """

    def __init__(
        self,
        cell: Literal["lstm", "gru"],
        *,
        input_size: int,
        hidden_size: int,
        num_layers: int = 2,
        num_classes: int | None = None,
        head: Head | None = None,
        skip: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"ResidualRNN(cell={cell!r}) must be 'lstm' or 'gru'")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"residual_{cell}(input_size={input_size}, hidden_size={hidden_size}, "
                f"num_layers={num_layers}): all must be >= 1"
            )
        head = head if head is not None else ("last" if num_classes is not None else "sequence")
        if head not in ("sequence", "last", "last_concat"):
            raise ValueError(
                f"residual_{cell}(head={head!r}) must be 'sequence' (every step), 'last' (the "
                "last step) or 'last_concat' (seed 001: the projected last state appended)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"residual_{cell}(dropout={dropout}) needs 0 <= dropout < 1")
        self.cell, self.head, self.skip = cell, head, skip
        layers: list[nn.Module] = []
        for i in range(num_layers):
            size = input_size if i == 0 else hidden_size
            body = _CELLS[cell](size, hidden_size, batch_first=True)
            if skip:
                # shortcut="auto" plans nn.Linear(size, hidden_size) when the sizes differ;
                # in_shape builds it now, before any optimizer sees the parameters.
                layers.append(Residual(body, in_shape=(1, 1, size), layout="NLC"))
            else:
                layers.append(plain_residual(body, in_shape=(1, 1, size), layout="NLC"))
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.last_proj = nn.Linear(hidden_size, hidden_size) if head == "last_concat" else None
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes is not None else None

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, input_size) -> (N, T, hidden_size)``: the stack without its head."""
        if x.ndim != 3:
            raise ValueError(
                f"residual_{self.cell} takes batch-first sequences (N, T, input_size), got a "
                f"{x.ndim}-D tensor of shape {tuple(x.shape)}; add a batch dim with x[None]"
            )
        h = x
        for i, layer in enumerate(self.layers):
            if i > 0 and self.dropout is not None:
                h = self.dropout(h)
            h, _ = layer(h)  # (N, T, hidden_size); the final (h_n, c_n) state is not used
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.forward_sequence(x)  # (N, T, H)
        if self.head == "last":
            h = h[:, -1]  # (N, H)
        elif self.last_proj is not None:
            last = self.last_proj(h[:, -1])  # (N, H)
            h = torch.cat([h, last.unsqueeze(1)], dim=1)  # (N, T + 1, H)
        return h if self.fc is None else self.fc(h)


@register_model
def residual_lstm(
    *,
    input_size: int,
    hidden_size: int,
    num_layers: int = 2,
    num_classes: int | None = None,
    head: Head | None = None,
    skip: bool = True,
    dropout: float = 0.0,
) -> ResidualRNN:
    """A residual LSTM stack; see :class:`ResidualRNN`.

    Args:
        input_size: features per step of the input ``(N, T, input_size)``.
        hidden_size: features of every LSTM layer.
        num_layers: recurrent layers, each with its own skip.
        num_classes: size of a final ``Linear`` head (``None``: no head).
        head: ``"sequence"``, ``"last"`` or ``"last_concat"``; default ``"last"`` with
            ``num_classes`` and ``"sequence"`` without.
        skip: ``False`` builds the plain stack.
        dropout: dropout between layers (on each layer's input but the first's), as
            ``nn.LSTM(dropout=...)``.
    """
    return ResidualRNN(
        "lstm",
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_classes=num_classes,
        head=head,
        skip=skip,
        dropout=dropout,
    )


@register_model
def residual_gru(
    *,
    input_size: int,
    hidden_size: int,
    num_layers: int = 2,
    num_classes: int | None = None,
    head: Head | None = None,
    skip: bool = True,
    dropout: float = 0.0,
) -> ResidualRNN:
    """A residual GRU stack; arguments as :func:`residual_lstm`."""
    return ResidualRNN(
        "gru",
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_classes=num_classes,
        head=head,
        skip=skip,
        dropout=dropout,
    )


__all__ = ["ResidualRNN", "residual_gru", "residual_lstm"]
