"""Keras tests run on the torch backend (no TensorFlow needed); it must be set before import."""

from __future__ import annotations

import os

import pytest

os.environ["KERAS_BACKEND"] = "torch"
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
