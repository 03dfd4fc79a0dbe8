"""Keras tests run on the backend the user set (``KERAS_BACKEND=jax pytest tests/keras``), else on
torch, which the dev install always has. It must be set before Keras is imported."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", minversion="3.3")


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    # Keras' torch backend converts tensors with np.array(x), which NumPy 2 warns about.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    )
