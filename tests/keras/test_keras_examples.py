"""The seed 000 Keras examples run (imported, with a short fit) and assert their shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["dense", "cnn", "lstm"])
def test_seed000_example_runs(name: str) -> None:
    path = EXAMPLES / f"keras_seed000_{name}.py"
    spec = importlib.util.spec_from_file_location(f"keras_seed000_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.main(epochs=1, samples=16)
    assert isinstance(model, keras.Model)
