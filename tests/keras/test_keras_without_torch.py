"""A TensorFlow or JAX user's machine: skipkit.keras and skipkit.errors work with no torch.

Each check runs in a fresh interpreter whose ``sys.meta_path`` refuses any ``torch`` module, on
Keras' JAX backend (a dev dependency), so a stray ``import torch`` anywhere fails the test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="needs a torch-free Keras backend (jax)"
)

SRC = Path(__file__).resolve().parents[2] / "src"

BLOCK_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
"""


def run_without_torch(code: str, tmp_path: Path) -> str:
    env = {"KERAS_BACKEND": "jax", "PYTHONPATH": str(SRC), "JAX_PLATFORMS": "cpu"}
    script = BLOCK_TORCH + textwrap.dedent(code)
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**env, "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_keras_layers_build_fit_and_save_without_torch(tmp_path: Path) -> None:
    out = run_without_torch(
        """
        import numpy as np
        import keras
        import skipkit.errors
        from skipkit.keras import DenseBlock, Highway, Residual, ShapeMismatchError

        keras.utils.set_random_seed(0)
        inp = keras.Input((8, 3))
        h = Residual(keras.layers.Dense(16, activation="relu"), post="relu")(inp)  # projects
        h = Highway(keras.layers.Dense(16, activation="relu"))(h)
        h = Residual(keras.layers.Dense(16), merge="tanh_gate")(h)
        h = Residual(keras.layers.Dense(16), merge="layerscale_skip")(h)
        h = Residual(keras.layers.Dense(16), merge="weighted")(h)
        h = DenseBlock(num_layers=2, growth=4)(h)                               # 16 -> 24
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
        model.compile("adam", "mse")
        x = np.random.default_rng(0).normal(size=(32, 8, 3)).astype("float32")
        y = x.sum(axis=(1, 2))[:, None]
        hist = model.fit(x, y, epochs=8, batch_size=8, verbose=0).history["loss"]
        assert hist[-1] < hist[0], hist
        model.save("m.keras")
        again = keras.models.load_model("m.keras")
        np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-5)
        try:
            Residual(keras.layers.Dense(4), shortcut="identity")(keras.ops.ones((2, 3)))
        except ShapeMismatchError as err:
            assert isinstance(err, skipkit.errors.ShapeMismatchError)
        else:
            raise SystemExit("no ShapeMismatchError")
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print(keras.backend.backend())
        """,
        tmp_path,
    )
    assert out.strip() == "jax"


def test_torch_names_say_how_to_install_torch(tmp_path: Path) -> None:
    run_without_torch(
        """
        import skipkit
        assert "Residual" in dir(skipkit)
        try:
            skipkit.Residual
        except ImportError as err:
            assert 'pip install "skipkit[torch]"' in str(err), err
        else:
            raise SystemExit("no ImportError")
        """,
        tmp_path,
    )
