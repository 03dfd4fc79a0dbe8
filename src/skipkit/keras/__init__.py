"""Keras 3 skip connections (any backend): ``Residual``, ``Highway``, ``DenseBlock``.

``pip install "skipkit[keras]"`` beside a backend (TensorFlow, JAX or PyTorch; pick it with
``KERAS_BACKEND``), then::

    import keras
    from skipkit.keras import Residual

    model = keras.Sequential([
        keras.Input((10,)),
        Residual(keras.layers.Dense(64, activation="relu")),  # 10 -> 64: Dense projection
        Residual(keras.layers.Dense(128, activation="relu")),
        keras.layers.Dense(1, activation="sigmoid"),
    ])

The core package never imports Keras; only this subpackage does. This subpackage never
imports PyTorch (unless it is the Keras backend): a TensorFlow or JAX user needs no torch.
"""

from __future__ import annotations

try:
    import keras
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    if err.name not in (None, "keras"):  # Keras is there; its backend is not
        raise ImportError(
            f"Keras is installed but its backend failed to import ({err}). Install the backend "
            "(pip install torch | jax | tensorflow) or choose an installed one with "
            "KERAS_BACKEND=torch|jax|tensorflow before importing keras"
        ) from err
    raise ImportError(
        'skipkit.keras needs Keras 3: pip install "skipkit[keras]" (or pip install "keras>=3.3")'
    ) from err

if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover - Keras 2 is not supported
    raise ImportError(
        f"skipkit.keras needs Keras 3, found keras {keras.__version__}: "
        'pip install "skipkit[keras]" (or pip install -U "keras>=3.3")'
    )

from skipkit.errors import ShapeMismatchError
from skipkit.keras.dense import DenseBlock, dense_layer
from skipkit.keras.layers import Highway, Residual
from skipkit.keras.merges import Add, Concat, Film, Gate, Mul, Scale, TanhGate, WeightedSum
from skipkit.keras.plain import skips_disabled
from skipkit.keras.shortcuts import plan_shortcut

__all__ = [
    "Add",
    "Concat",
    "DenseBlock",
    "Film",
    "Gate",
    "Highway",
    "Mul",
    "Residual",
    "Scale",
    "ShapeMismatchError",
    "TanhGate",
    "WeightedSum",
    "dense_layer",
    "plan_shortcut",
    "skips_disabled",
]
