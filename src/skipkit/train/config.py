"""Training configuration and learning-rate schedules.

The schedule is a pure function of the optimizer step, so a resumed run needs nothing but the
step count to continue on the same curve.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "AMP_MODES",
    "ON_NAN",
    "OPTIMIZERS",
    "RESUMABLE_CHANGES",
    "SCHEDULES",
    "TrainConfig",
    "lr_factor",
]

OPTIMIZERS = ("sgd", "adamw")
ON_NAN = ("stop", "skip")
RESUMABLE_CHANGES = (
    "epochs",
    "out_dir",
    "resume",
    "overwrite",
    "quiet",
    "device",
    "num_workers",
    "compile",
    "on_nan",
)
"""Fields a resumed run may change: ``epochs`` (to extend it), where/how it runs, and what a
non-finite loss does; any other difference from the checkpoint's config refuses to resume."""
SCHEDULES = ("onecycle", "cosine", "step", "none")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Everything a :class:`~skipkit.train.Trainer` run depends on.

    The defaults are the CIFAR ResNet recipe of He et al. (SGD, lr 0.1, momentum 0.9, weight
    decay 1e-4, batch 128) with a one-cycle schedule, which reaches the same place in a few
    dozen epochs instead of 182.

    Attributes:
        epochs: number of passes over the training set.
        batch_size: examples per optimizer step *per process* under DDP.
        optimizer: ``"sgd"`` or ``"adamw"``.
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: use Nesterov momentum (SGD).
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay, applied to all parameters.
        betas: AdamW betas.
        schedule: ``"onecycle"``, ``"cosine"``, ``"step"`` or ``"none"``.
        milestones: epochs at which ``"step"`` multiplies the lr by ``gamma``;
            ``None`` means half and three quarters of ``epochs`` (He et al.'s 91 and 136 of 182).
        gamma: factor of the ``"step"`` schedule.
        onecycle_pct: fraction of the steps spent rising to the peak in ``"onecycle"``.
        warmup_epochs: linear warm-up from ~0 to ``lr`` before the schedule (may be fractional).
        label_smoothing: passed to the cross-entropy loss.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        amp: mixed precision on CUDA: ``"auto"`` (bf16 where supported), ``"bf16"``, ``"fp16"``
            (with a gradient scaler) or ``"off"``. Ignored on CPU.
        channels_last: use the channels-last memory format for 4-D tensors (2-D convs).
        compile: wrap the model in ``torch.compile``.
        seed: seeds torch, numpy, python ``random`` and the data order.
        num_workers: DataLoader worker processes.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …; ``None`` picks CUDA when available.
        out_dir: where metrics, checkpoints and the final weights go; ``None`` writes nothing.
        resume: continue from the checkpoint in ``out_dir`` if there is one; the checkpoint's
            config, model and data must match (only :data:`RESUMABLE_CHANGES` may differ).
        overwrite: a fresh run in a folder holding an earlier run removes the files that run
            listed in its manifest (never other files); without it such a folder is refused.
        on_nan: a non-finite training loss either stops training at that step
            (``"stop"``: :class:`~skipkit.train.NonFiniteLossError`, the last checkpoint kept)
            or skips that batch (``"skip"``, with a warning).
        checkpoint: write a checkpoint after every epoch (needs ``out_dir``).
        deterministic: ask torch for deterministic kernels (slower on CUDA; CPU runs are
            already reproducible).
        quiet: no progress bars and no per-epoch log lines.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "onecycle"
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    onecycle_pct: float = 0.3
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str | None = None
    out_dir: str | os.PathLike[str] | None = None
    resume: bool = False
    overwrite: bool = False
    on_nan: str = "stop"
    checkpoint: bool = True
    deterministic: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, the value and the accepted range."""
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "amp": AMP_MODES,
            "on_nan": ON_NAN,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        for name in ("epochs", "batch_size", "seed", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        # (name, value, low, high, low included, high included)
        ranges: list[tuple[str, Any, float, float, bool, bool]] = [
            ("epochs", self.epochs, 1, math.inf, True, False),
            ("batch_size", self.batch_size, 1, math.inf, True, False),
            ("lr", self.lr, 0, math.inf, False, False),
            ("momentum", self.momentum, 0, 1, True, False),
            ("weight_decay", self.weight_decay, 0, math.inf, True, False),
            ("gamma", self.gamma, 0, math.inf, False, False),
            ("onecycle_pct", self.onecycle_pct, 0, 1, False, False),
            ("warmup_epochs", self.warmup_epochs, 0, math.inf, True, False),
            ("label_smoothing", self.label_smoothing, 0, 1, True, False),
            ("num_workers", self.num_workers, 0, math.inf, True, False),
            ("seed", self.seed, 0, 2**63 - 1, True, True),
            ("betas[0]", self.betas[0], 0, 1, True, False),
            ("betas[1]", self.betas[1], 0, 1, True, False),
        ]
        if self.grad_clip is not None:
            ranges.append(("grad_clip", self.grad_clip, 0, math.inf, False, False))
        for name, value, low, high, low_in, high_in in ranges:
            _check_range(name, value, low, high, low_in, high_in)
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the folder of the run to continue)")
        if self.resume and self.overwrite:
            raise ValueError("resume=True and overwrite=True exclude each other")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=True needs optimizer='sgd' and momentum > 0")

    def step_milestones(self) -> tuple[int, ...]:
        """Epochs at which the ``"step"`` schedule decays the lr."""
        if self.milestones is not None:
            return tuple(sorted(self.milestones))
        return (self.epochs // 2, (3 * self.epochs) // 4)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (paths as strings)."""
        d = asdict(self)
        if d["out_dir"] is not None:
            d["out_dir"] = str(Path(d["out_dir"]))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        kw = dict(d)
        for key in ("betas", "milestones"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``config.lr`` for optimizer step ``step`` (0-based).

    ``onecycle`` follows Smith's one-cycle policy as in ``torch.optim.lr_scheduler.OneCycleLR``
    (cosine rise from ``lr/25`` to ``lr`` over ``onecycle_pct`` of the steps, then cosine decay to
    ``lr/25e4``); the momentum is not cycled.
    """
    total = config.epochs * steps_per_epoch
    warm = round(config.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    s, span = step - warm, max(1, total - warm)
    if config.schedule == "none":
        return 1.0
    if config.schedule == "step":
        passed = sum(step >= m * steps_per_epoch for m in config.step_milestones())
        return float(config.gamma**passed)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(s, span) / span))
    start, end = 1.0 / 25.0, 1.0 / 25e4
    up = max(1.0, config.onecycle_pct * span - 1)
    if s <= up:
        return _cos_interp(start, 1.0, s / up)
    down = max(1.0, span - 1 - up)
    return _cos_interp(1.0, end, min(1.0, (s - up) / down))


def _cos_interp(a: float, b: float, t: float) -> float:
    """Cosine interpolation from ``a`` (t=0) to ``b`` (t=1)."""
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * t))


def _check_range(
    name: str, value: Any, low: float, high: float, low_in: bool, high_in: bool
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    ok = math.isfinite(value) and (value >= low if low_in else value > low)
    ok = ok and (value <= high if high_in else value < high)
    if not ok:
        lo, hi = "[" if low_in else "(", "]" if high_in else ")"
        raise ValueError(f"{name} must be finite and in {lo}{low:g}, {high:g}{hi}; got {value!r}")
