"""Training: :class:`Trainer`, :class:`TrainConfig`, callbacks, crash-safe checkpoints.

Example::

    from skipkit.data import mnist1d
    from skipkit.train import Trainer, TrainConfig, seed_everything

    train, test = mnist1d()                                  # x: (N, 1, 40), y: (N,)
    seed_everything(0)
    model = skipkit.models.create("resnet20", dims=1, in_channels=1, num_classes=10)
    history = Trainer(model, train, test, TrainConfig(epochs=30, out_dir="runs/r20")).fit()

``load_weights`` is :func:`skipkit.models.load_weights` (one safe loader for the package).
"""

from __future__ import annotations

from skipkit.models import load_weights
from skipkit.train.checkpoint import save_weights
from skipkit.train.config import TrainConfig, lr_factor
from skipkit.train.distributed import teardown
from skipkit.train.trainer import (
    METRIC_FIELDS,
    Callback,
    NonFiniteLossError,
    Trainer,
    seed_everything,
)

__all__ = [
    "METRIC_FIELDS",
    "Callback",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "load_weights",
    "lr_factor",
    "save_weights",
    "seed_everything",
    "teardown",
]
