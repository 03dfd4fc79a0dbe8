"""Keras 3 skip connections (any backend): ``Residual``, ``Highway``, ``DenseBlock``.

``pip install skipkit[keras]``, pick a backend (``KERAS_BACKEND=torch`` needs no TensorFlow),
then::

    import keras
    from skipkit.keras import Residual

    model = keras.Sequential([
        keras.Input((10,)),
        Residual(keras.layers.Dense(64, activation="relu")),  # 10 -> 64: Dense projection
        Residual(keras.layers.Dense(128, activation="relu")),
        keras.layers.Dense(1, activation="sigmoid"),
    ])

The core package never imports Keras; only this subpackage does.
"""

from __future__ import annotations

try:
    import keras
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "skipkit.keras needs Keras 3: pip install skipkit[keras] (or pip install 'keras>=3.3')"
    ) from err

if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover - Keras 2 is not supported
    raise ImportError(
        f"skipkit.keras needs Keras 3, found keras {keras.__version__}: "
        "pip install skipkit[keras] (or pip install -U 'keras>=3.3')"
    )

from skipkit.errors import ShapeMismatchError
from skipkit.keras.dense import DenseBlock, dense_layer
from skipkit.keras.layers import Highway, Residual
from skipkit.keras.merges import Add, Concat, Gate, Scale
from skipkit.keras.shortcuts import plan_shortcut

__all__ = [
    "Add",
    "Concat",
    "DenseBlock",
    "Gate",
    "Highway",
    "Residual",
    "Scale",
    "ShapeMismatchError",
    "dense_layer",
    "plan_shortcut",
]
