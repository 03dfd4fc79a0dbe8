"""Train ResNet-20 (1-D convolutions) on MNIST-1D with the Trainer, then resume it.

    python examples/train_mnist1d.py            # about a minute on a laptop CPU
    torchrun --nproc-per-node 2 examples/train_mnist1d.py   # the same with DDP

Writes runs/example_train/{metrics.csv, metrics.json, checkpoint.json, checkpoints/,
model.safetensors}. Running it again continues from the last checkpoint (resume=True): kill it
mid-way with Ctrl-C and start it again to see the run pick up where it stopped.
"""

from __future__ import annotations

import logging

import torch

import skipkit.models as models
from skipkit.data import mnist1d
from skipkit.train import (
    Callback,
    TrainConfig,
    Trainer,
    load_weights,
    seed_everything,
    teardown,
)


class BestTestError(Callback):
    """A callback: remember the lowest test error seen at the end of an epoch."""

    def __init__(self) -> None:
        self.best = 1.0

    def on_train_start(self, trainer: Trainer) -> None:
        # a resumed run starts with the history of the epochs already done
        self.best = min((r["test_error"] for r in trainer.history), default=1.0)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.best = min(self.best, metrics["test_error"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per epoch
    train, test = mnist1d()  # x: (4000, 1, 40) and (1000, 1, 40); y: class indices
    seed_everything(0)  # before building: the same initial weights every time
    model = models.create("resnet20", dims=1, in_channels=1, num_classes=10)
    config = TrainConfig(
        epochs=10, lr=0.1, schedule="onecycle", out_dir="runs/example_train", resume=True
    )
    best = BestTestError()
    trainer = Trainer(model, train, test, config, callbacks=[best])
    history = trainer.fit()
    if trainer.dist.is_main:
        last = history[-1]
        print(f"train error {last['train_error']:.2%}, test error {last['test_error']:.2%}")
        print(f"best test error at an epoch end: {best.best:.2%}")

        fresh = models.create("resnet20", dims=1, in_channels=1, num_classes=10)
        load_weights(fresh, "runs/example_train/model.safetensors")
        x, y = test.tensors
        with torch.no_grad():
            error = (fresh.eval()(x).argmax(1) != y).float().mean().item()
        print(f"reloaded weights, test error {error:.2%}")
    teardown()  # under torchrun: leave the process group together
