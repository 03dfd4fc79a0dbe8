"""How a :class:`~skipkit.train.Trainer` is set up from its config: seeding, the device, the
autocast dtype and the optimizer.

Separate from the loop (:mod:`skipkit.train.trainer`): these are pure choices from
:class:`~skipkit.train.TrainConfig` fields, made once before the first step.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from skipkit.train.config import TrainConfig

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """The configured device; CUDA without an index is this process's ``LOCAL_RANK`` GPU."""
    if name is not None:
        device = torch.device(name)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``config.amp`` (``None``: no autocast, always so off CUDA)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW with the config's hyper-parameters."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
