"""A small, typed training loop for classifiers: ``Trainer(model, train, test, config).fit()``.

What one epoch does::

    for x, y in loader:                    x: (N, C, *spatial), y: (N,) class indices
        lr  <- config.lr * lr_factor(step)       schedule is a function of the step
        loss = CE(model(x), y)                   autocast on CUDA (bf16/fp16)
        loss not finite -> stop (NonFiniteLossError) or skip the batch (config.on_nan)
        backward; [unscale]; on_after_backward; [clip]; optimizer step; on_step_end
    evaluate(test); write metrics.csv/json; write checkpoint; on_epoch_end

``out_dir`` is a run folder (:func:`skipkit._runs.open_run`): a fresh run refuses a folder that
holds an earlier run or foreign files (``overwrite=True`` removes only the earlier run's
files), and ``resume=True`` refuses a checkpoint whose config, model or data differ.

Under ``torchrun`` the model is wrapped in DistributedDataParallel, every process sees its own
shard of each epoch, metrics are summed over processes, and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from skipkit._runs import RunFolder, open_run
from skipkit.errors import CheckpointError
from skipkit.train._hooks import Callback, NonFiniteLossError
from skipkit.train._run_files import METRIC_FIELDS, check_resumable, write_metrics
from skipkit.train._setup import amp_dtype, build_optimizer, resolve_device, seed_everything
from skipkit.train.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from skipkit.train.config import TrainConfig, lr_factor
from skipkit.train.distributed import DistInfo, all_reduce_sum, broadcast_buffers, setup
from skipkit.train.identity import (
    check_classifier,
    data_fingerprint,
    model_fingerprint,
)
from skipkit.train.metrics import format_row, from_json, json_row

__all__ = [
    "METRIC_FIELDS",
    "TRAIN_FILES",
    "Callback",
    "NonFiniteLossError",
    "Trainer",
    "check_classifier",
    "seed_everything",
]

log = logging.getLogger(__name__)

TRAIN_FILES = ("checkpoint.json", "metrics.csv", "metrics.json", "model.safetensors")
"""Fixed names a training run writes in its folder (checkpoints go to ``checkpoints/``)."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Train a classifier returning logits ``(N, num_classes)`` with cross-entropy.

    Args:
        model: the network; moved to the configured device. Seed (e.g. with
            :func:`seed_everything`) before building it for a reproducible initialisation.
        train_data: a ``Dataset`` of ``(x, y)`` pairs, ``x: (C, *spatial)``, ``y: ()`` int64.
        test_data: evaluated after every epoch when given.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        callbacks: :class:`Callback` objects called in order.
        loss_fn: replaces ``CrossEntropyLoss(label_smoothing=config.label_smoothing)``;
            called as ``loss_fn(logits, y)``.
        identity: JSON values naming what is trained (the CLI gives the registry name and
            builder options, the dataset name and folder); stored in the checkpoint with the
            config and fingerprints of the model (class, parameter names and shapes) and the
            data, and compared on resume.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset[Any],
        test_data: Dataset[Any] | None = None,
        config: TrainConfig | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        loss_fn: LossFn | None = None,
        identity: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        base = (config or TrainConfig()).to_dict()
        base.update(overrides)
        self.config = cfg = TrainConfig.from_dict(base)
        if loss_fn is None:  # before seeding: drawing items may use the global generator
            check_classifier(model, train_data)
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = setup(self.device)
        seed_everything(cfg.seed + self.dist.rank)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.model = model.to(self.device)
        if cfg.channels_last:  # only 4-D weights (2-D convs) change layout
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model.parameters(), cfg)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn: LossFn = loss_fn or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.callbacks = list(callbacks)

        net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        self.net: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(net) if cfg.compile else net
        )

        self.train_data, self.test_data = train_data, test_data
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            train_data,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=cfg.seed,
        )
        self._loader_rng = torch.Generator()
        self.train_loader = DataLoader(
            train_data,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self._loader_rng,
        )
        self.steps_per_epoch = len(self.train_loader)
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._show = not cfg.quiet and self.dist.is_main
        self.identity = {
            **(identity or {}),
            "model": model_fingerprint(self.model),
            "data": {"train": data_fingerprint(train_data), "test": data_fingerprint(test_data)},
        }
        self.run: RunFolder | None = None
        self.checkpoint_epoch: int | None = None
        self._last_finite: float | None = None

    # ------------------------------------------------------------------------------ training

    def fit(self) -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs (the rest of them when resuming).

        Returns:
            the history: one dict per epoch with the keys of :data:`METRIC_FIELDS`.
        """
        cfg = self.config
        if self.out_dir is not None and self.dist.is_main:
            self.run = open_run(
                self.out_dir,
                "train",
                resume=cfg.resume,
                overwrite=cfg.overwrite,
                writes=TRAIN_FILES,
            )
            self.run.expect(*TRAIN_FILES[1:])
        try:
            return self._fit()
        finally:
            if self.run is not None:
                self.run.close()
                self.run = None

    def _fit(self) -> list[dict[str, float]]:
        cfg = self.config
        if self.out_dir is not None and cfg.resume:
            self.load_checkpoint(self.out_dir)
        for cb in self.callbacks:
            cb.on_train_start(self)
        for epoch in range(self.epoch, cfg.epochs):
            t0 = time.perf_counter()
            train_loss, train_error = self._train_epoch(epoch)
            broadcast_buffers(self.model, self.dist)
            test = self.evaluate(self.test_data) if self.test_data is not None else None
            row = {
                "epoch": float(epoch + 1),
                "train_loss": train_loss,
                "train_error": train_error,
                "test_loss": test["loss"] if test else math.nan,
                "test_error": test["error"] if test else math.nan,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
                "time": time.perf_counter() - t0,
            }
            self.history.append(row)
            self.epoch = epoch + 1
            if self._show:
                log.info(format_row(row, cfg.epochs))
            if self.run is not None:
                self._write_metrics()
                if cfg.checkpoint:
                    self.save_checkpoint(self.out_dir)  # type: ignore[arg-type]
            for cb in self.callbacks:
                cb.on_epoch_end(self, row)
        if self.run is not None:
            weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            self.run.write_bytes("model.safetensors", safetensors.torch.save(weights))
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over this process's shard; returns (mean loss, error) over all processes."""
        cfg = self.config
        self.model.train()
        # the data order and the worker seeds depend on (seed, epoch) only, so a resumed run
        # sees exactly the batches the uninterrupted one would have
        self.sampler.set_epoch(epoch)
        self._loader_rng.manual_seed(cfg.seed * 100_003 + epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, errors, count
        bar_iter: Iterable[Any] = self.train_loader
        bar: tqdm[Any] | None = None
        if self._show and sys.stderr.isatty():
            bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
            bar_iter = bar
        for i, (x, y) in enumerate(bar_iter):
            lr = cfg.lr * lr_factor(cfg, self.step, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                logits = self.net(x)  # (N, num_classes)
                loss = self.loss_fn(logits, y)
            if not self._loss_is_finite(loss, epoch, i):
                self.step += 1  # the schedule stays on its curve: the batch counts as a step
                continue
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            for cb in self.callbacks:
                cb.on_after_backward(self)
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.step += 1
            loss = loss.detach()
            with torch.no_grad():
                sums[0] += loss.double() * y.shape[0]
                sums[1] += (logits.argmax(1) != y).sum()
                sums[2] += y.shape[0]
            for cb in self.callbacks:
                cb.on_step_end(self, loss)
            if bar is not None and i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        if bar is not None:
            bar.close()
        all_reduce_sum(sums, self.dist)
        loss_sum, errors, count = sums.tolist()
        if count == 0 and len(self.train_loader) > 0:
            raise self._nonfinite(epoch, "every batch of the epoch had a non-finite loss")
        return loss_sum / max(count, 1.0), errors / max(count, 1.0)

    def _loss_is_finite(self, loss: torch.Tensor, epoch: int, batch: int) -> bool:
        """``True`` for a finite loss; otherwise skip (``False``) or raise, per ``on_nan``."""
        bad = (~torch.isfinite(loss.detach())).to(torch.float64).reshape(1)
        all_reduce_sum(bad, self.dist)  # every process skips or stops together
        if not bool(bad.item()):
            self._last_finite = float(loss.detach())
            return True
        what = f"non-finite loss ({float(loss.detach())}) at batch {batch + 1}"
        if self.config.on_nan == "skip":
            log.warning("epoch %d step %d: %s; skipping the batch", epoch + 1, self.step, what)
            return False
        raise self._nonfinite(epoch, what)

    def _nonfinite(self, epoch: int, what: str) -> NonFiniteLossError:
        kept = (
            f"the last good checkpoint (epoch {self.checkpoint_epoch}) is kept in {self.out_dir}"
            if self.checkpoint_epoch is not None
            else "no checkpoint was written yet"
        )
        last = "none" if self._last_finite is None else f"{self._last_finite:.6g}"
        return NonFiniteLossError(
            f"training stopped: {what} in epoch {epoch + 1}, step {self.step}; last finite loss "
            f"{last}; {kept}. Lower the learning rate, set a gradient clip, or skip such "
            "batches (on_nan='skip', --on-nan skip)",
            epoch=epoch + 1,
            step=self.step,
            last_finite=self._last_finite,
            checkpoint_epoch=self.checkpoint_epoch,
        )

    @torch.no_grad()
    def evaluate(self, data: Dataset[Any], *, batch_size: int = 512) -> dict[str, float]:
        """Mean loss and error (fraction misclassified) of the model on ``data``.

        Under DDP each process evaluates every ``world_size``-th item and the sums are
        combined, so every item counts exactly once; every process must call it.
        """
        was_training = self.model.training
        self.model.eval()
        part: Dataset[Any] = data
        if self.dist.enabled:
            part = Subset(data, range(self.dist.rank, len(data), self.dist.world_size))  # type: ignore[arg-type]
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        loader = DataLoader(part, batch_size=batch_size, num_workers=self.config.num_workers)
        for x, y in loader:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                logits = self.model(x)
                loss = self.loss_fn(logits.float(), y)
            sums[0] += loss.double() * y.shape[0]
            sums[1] += (logits.argmax(1) != y).sum()
            sums[2] += y.shape[0]
        all_reduce_sum(sums, self.dist)
        self.model.train(was_training)
        loss_sum, errors, count = sums.tolist()
        return {"loss": loss_sum / max(count, 1.0), "error": errors / max(count, 1.0)}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------------ files and state

    def _write_metrics(self) -> None:
        assert self.run is not None
        write_metrics(self.run, self.config, self.history, has_test=self.test_data is not None)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights needed to continue exactly: optimizer, schedule, RNG."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"schedule": self.config.schedule, "step": self.step},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "history": [json_row(r, set()) for r in self.history],
            "config": self.config.to_dict(),
            "identity": self.identity,
        }

    def save_checkpoint(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write the checkpoint of the current epoch (atomic; see :mod:`~skipkit.train.checkpoint`).

        ``out_dir`` must be this trainer's run folder, claimed by :meth:`fit`.
        """
        if self.run is None or Path(out_dir) != self.run.path:
            raise ValueError(f"{out_dir} is not the run folder of this fit() call")
        path = write_checkpoint(self.run, self.epoch, self.model, self.state_dict())
        self.checkpoint_epoch = self.epoch
        return path

    def load_checkpoint(self, out_dir: str | os.PathLike[str]) -> bool:
        """Restore weights, optimizer, schedule position, RNG and history from ``out_dir``.

        Returns ``False`` (and starts fresh) when ``out_dir`` has no checkpoint. Falls back to
        the newest checkpoint that verifies, and says so. In a single process the continued
        run is bit-identical to an uninterrupted one on CPU; under DDP rank 0 restores its RNG
        state and the other ranks reseed from (seed, rank, epoch).

        Raises:
            CheckpointError: no checkpoint verifies, or it records another config, model or
                data (each differing key listed, old -> new); only :data:`RESUMABLE_CHANGES`
                may differ, and ``epochs`` may only grow.
        """
        found = read_checkpoint(out_dir)
        if found is None:
            if self._show:
                log.info("no checkpoint in %s; starting from scratch", out_dir)
            return False
        for note in found.skipped:
            log.warning("skipping a damaged checkpoint: %s", note)
        if found.skipped:
            log.warning("resuming from the newest checkpoint that verifies: epoch %d", found.epoch)
        epoch, weights, state = found.epoch, found.weights, found.state
        check_resumable(found.path, epoch, state, self.config, self.identity)
        try:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.step = epoch, int(state["step"])
            self.history = [{k: from_json(v) for k, v in r.items()} for r in state["history"]]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            text = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"cannot be restored ({text})", path=found.path) from None
        self.checkpoint_epoch = epoch
        if self.dist.is_main:
            set_rng_state(state["rng"])
        else:
            seed_everything(self.config.seed + 1000 * self.dist.rank + epoch)
        if self._show:
            log.info("resumed from %s at epoch %d (step %d)", out_dir, epoch, self.step)
        return True
