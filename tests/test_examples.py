"""The seed rewrites and model examples in examples/ run and assert their own results.

(Keras, surgery and diagnostics examples are run by their own test packages.)"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "examples"
EXAMPLES = sorted(ROOT.glob("seed0*.py"))
MODEL_EXAMPLES = sorted(ROOT.glob("models_*.py"))


def test_every_seed_snippet_has_an_example() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "seed000_fc_skip",
        "seed000_cnn_skip",
        "seed000_lstm_skip",
        "seed001_skip_block",
        "seed001_concat_block",
        "seed001_rnn",
        "seed003_simple_block",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
@pytest.mark.parametrize("path", MODEL_EXAMPLES, ids=lambda p: p.stem)
def test_model_example_runs(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()
