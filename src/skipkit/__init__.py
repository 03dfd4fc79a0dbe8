"""skipkit: skip connections of every kind for PyTorch.

Every skip has four parts: a **tap** (where the skipped signal comes from), a **shortcut**
(what makes it fit), a **merge** (how it joins the main path) and a **post** (what follows).

>>> import torch, skipkit as sk
>>> block = sk.Residual(torch.nn.Linear(10, 64))      # 10 -> 64: a Linear shortcut is planned
>>> block(torch.randn(4, 10)).shape
torch.Size([4, 64])

The torch-backed names load on first use (PEP 562), so ``import skipkit.keras`` and
``import skipkit.errors`` work on a machine without PyTorch (``pip install "skipkit[keras]"``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from skipkit.errors import CheckpointError, ShapeMismatchError

if TYPE_CHECKING:
    from skipkit import data, diagnostics, experiments, models, surgery, train
    from skipkit import keras as keras  # not in __all__: a star import must not need Keras
    from skipkit._residual import DeepNorm, deepnorm
    from skipkit.dense import DenseBlock, DenseLayer
    from skipkit.merges import Add, Concat, Film, Gate, Merge, Mul, Scale, TanhGate, WeightedSum
    from skipkit.protocol import SkipInfo, SkipModule, skips_disabled
    from skipkit.shortcuts import CenterCrop, Resample, ZeroPad, plan_shortcut
    from skipkit.skips import DropPath, Highway, Residual, materialize
    from skipkit.streams import HyperConnection, expand_streams, reduce_streams
    from skipkit.surgery import add_skip, connect, list_skips, remove_skip
    from skipkit.surgery.taps import taps

# One line per public name: the module it is imported from on first use (mirrors the
# TYPE_CHECKING imports above, which are what mypy and IDEs read).
_LAZY: dict[str, str] = {
    "Add": "skipkit.merges",
    "CenterCrop": "skipkit.shortcuts",
    "Concat": "skipkit.merges",
    "DeepNorm": "skipkit._residual",
    "DenseBlock": "skipkit.dense",
    "DenseLayer": "skipkit.dense",
    "DropPath": "skipkit.skips",
    "Film": "skipkit.merges",
    "Gate": "skipkit.merges",
    "Highway": "skipkit.skips",
    "HyperConnection": "skipkit.streams",
    "Merge": "skipkit.merges",
    "Mul": "skipkit.merges",
    "Resample": "skipkit.shortcuts",
    "Residual": "skipkit.skips",
    "Scale": "skipkit.merges",
    "SkipInfo": "skipkit.protocol",
    "SkipModule": "skipkit.protocol",
    "TanhGate": "skipkit.merges",
    "WeightedSum": "skipkit.merges",
    "ZeroPad": "skipkit.shortcuts",
    "add_skip": "skipkit.surgery",
    "connect": "skipkit.surgery",
    "deepnorm": "skipkit._residual",
    "expand_streams": "skipkit.streams",
    "list_skips": "skipkit.surgery",
    "materialize": "skipkit.skips",
    "plan_shortcut": "skipkit.shortcuts",
    "reduce_streams": "skipkit.streams",
    "remove_skip": "skipkit.surgery",
    "skips_disabled": "skipkit.protocol",
    "taps": "skipkit.surgery",
}
# Subpackages, also loaded on first use (``sk.models.create(...)``).
_SUBPACKAGES = ("data", "diagnostics", "experiments", "keras", "models", "surgery", "train")

_TORCH_HINT = (
    'skipkit.{name} needs PyTorch, which is not installed: pip install "skipkit[torch]" '
    '(the Keras layers need no PyTorch: pip install "skipkit[keras]", then import skipkit.keras)'
)


def _load(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == "torch" or (err.name or "").startswith("torch."):
            raise ImportError(_TORCH_HINT.format(name=module.removeprefix("skipkit."))) from err
        raise


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return _load(f"skipkit.{name}")
    if name in _LAZY:
        value = getattr(_load(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'skipkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "Film",
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
    "TanhGate",
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
