"""What a :class:`~skipkit.train.Trainer` says to the code around it: the :class:`Callback`
hooks it calls and the :class:`NonFiniteLossError` it raises when the loss diverges.

Separate from the loop (:mod:`skipkit.train.trainer`) so that a callback or an error handler
(the CLI maps the error to exit status 3) is read without the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from skipkit.train.trainer import Trainer

__all__ = ["Callback", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped at that step.

    Attributes:
        epoch: 1-based epoch of the step.
        step: 0-based optimizer step.
        last_finite: the last finite batch loss, or ``None``.
        checkpoint_epoch: the epoch of the last checkpoint written (kept), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int,
        last_finite: float | None,
        checkpoint_epoch: int | None,
    ) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step
        self.last_finite, self.checkpoint_epoch = last_finite, checkpoint_epoch


class Callback:
    """Hooks into :meth:`Trainer.fit`; subclass and override the ones you need.

    Every hook gets the trainer, whose ``model`` (the unwrapped module), ``optimizer``,
    ``epoch`` (epochs completed), ``step`` (optimizer steps taken) and ``history`` it may read.
    An exception raised in a hook stops training; the last checkpoint stays valid.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch (also when resuming)."""

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are in ``p.grad`` (unscaled under fp16), before clipping and the step."""

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        """After the optimizer step; ``loss`` is the batch's detached 0-dim loss."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After evaluation and checkpointing; ``metrics`` is the row just added to history."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""
