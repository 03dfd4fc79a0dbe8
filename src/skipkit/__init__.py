"""skipkit: skip connections of every kind for PyTorch.

Every skip has four parts: a **tap** (where the skipped signal comes from), a **shortcut**
(what makes it fit), a **merge** (how it joins the main path) and a **post** (what follows).

>>> import torch, skipkit as sk
>>> block = sk.Residual(torch.nn.Linear(10, 64))      # 10 -> 64: a Linear shortcut is planned
>>> block(torch.randn(4, 10)).shape
torch.Size([4, 64])
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from skipkit import surgery
from skipkit._residual import DeepNorm, deepnorm
from skipkit.dense import DenseBlock, DenseLayer
from skipkit.errors import CheckpointError, ShapeMismatchError
from skipkit.merges import Add, Concat, Gate, Merge, Mul, Scale, WeightedSum
from skipkit.shortcuts import CenterCrop, Resample, ZeroPad, plan_shortcut
from skipkit.skips import (
    DropPath,
    Highway,
    Residual,
    SkipInfo,
    SkipModule,
    materialize,
    skips_disabled,
)
from skipkit.streams import HyperConnection, expand_streams, reduce_streams
from skipkit.surgery import add_skip, connect, list_skips, remove_skip, taps

if TYPE_CHECKING:
    from skipkit import data, diagnostics, experiments, models, train

# Heavier subpackages load on first use (``sk.models.create(...)``), so ``import skipkit`` stays
# light and never pulls in matplotlib or Keras by itself.
_LAZY = ("data", "diagnostics", "experiments", "keras", "models", "train")


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"skipkit.{name}")
    raise AttributeError(f"module 'skipkit' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "Add",
    "CenterCrop",
    "CheckpointError",
    "Concat",
    "DeepNorm",
    "DenseBlock",
    "DenseLayer",
    "DropPath",
    "Gate",
    "Highway",
    "HyperConnection",
    "Merge",
    "Mul",
    "Resample",
    "Residual",
    "Scale",
    "ShapeMismatchError",
    "SkipInfo",
    "SkipModule",
    "WeightedSum",
    "ZeroPad",
    "__version__",
    "add_skip",
    "connect",
    "data",
    "deepnorm",
    "diagnostics",
    "expand_streams",
    "experiments",
    "list_skips",
    "materialize",
    "models",
    "plan_shortcut",
    "reduce_streams",
    "remove_skip",
    "skips_disabled",
    "surgery",
    "taps",
    "train",
]
