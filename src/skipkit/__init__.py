"""skipkit: skip connections of every kind for PyTorch.

Every skip has four parts: a **tap** (where the skipped signal comes from), a **shortcut**
(what makes it fit), a **merge** (how it joins the main path) and a **post** (what follows).

>>> import torch, skipkit as sk
>>> block = sk.Residual(torch.nn.Linear(10, 64))      # 10 -> 64: a Linear shortcut is planned
>>> block(torch.randn(4, 10)).shape
torch.Size([4, 64])
"""

from __future__ import annotations

from skipkit.merges import Add, Concat, Gate, Merge, Mul, Scale, WeightedSum
from skipkit.shapes import ShapeMismatchError
from skipkit.shortcuts import CenterCrop, Resample, ZeroPad, plan_shortcut
from skipkit.skips import (
    DenseBlock,
    DenseLayer,
    DropPath,
    Highway,
    Residual,
    SkipModule,
    materialize,
    skips_disabled,
)

__version__ = "0.1.0"

__all__ = [
    "Add",
    "CenterCrop",
    "Concat",
    "DenseBlock",
    "DenseLayer",
    "DropPath",
    "Gate",
    "Highway",
    "Merge",
    "Mul",
    "Resample",
    "Residual",
    "Scale",
    "ShapeMismatchError",
    "SkipModule",
    "WeightedSum",
    "ZeroPad",
    "__version__",
    "materialize",
    "plan_shortcut",
    "skips_disabled",
]
