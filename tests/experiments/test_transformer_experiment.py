"""skipkit.experiments.transformer: the task, the quick run, the report, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skipkit.cli import main
from skipkit.experiments.transformer import QUICK, Settings, VariantRun, findings, recall_data


def test_recall_data_is_deterministic_and_answerable() -> None:
    s = Settings(pairs=4, keys=10, values=5)
    x, y = recall_data(200, s, seed=3)
    x2, y2 = recall_data(200, s, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (200, 9) and int(y.max()) < 5
    keys, vals, query = x[:, 0:8:2], x[:, 1:8:2] - 10, x[:, 8]
    assert all(len(set(k.tolist())) == 4 for k in keys)  # distinct keys per sequence
    answer = vals[torch.arange(200), (keys == query[:, None]).int().argmax(1)]
    assert torch.equal(answer, y)
    with pytest.raises(ValueError, match="pairs=11"):
        recall_data(1, Settings(pairs=11, keys=10), seed=0)


def test_findings_are_derived_from_the_numbers() -> None:
    s = Settings(depths=(4,), variants=("plain", "pre", "mhc"), values=10)
    runs = [
        VariantRun("plain", 4, final_accuracy=0.1),
        VariantRun("pre", 4, final_accuracy=0.9),
        VariantRun("mhc", 4, final_accuracy=0.95, gains=[1.0, 1.0005]),
    ]
    text = "\n".join(findings(runs, s))
    assert "Chance is 10.0%" in text
    assert "plain 10.0%, pre 90.0%, mhc 95.0%" in text
    assert "best variant is mhc" in text and "plain ends 80% below pre-norm" in text
    assert "mhc: composite mixing gain after training, largest over depth 1.000" in text


@pytest.mark.slow
def test_quick_command_writes_the_report_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["transformers", "--quick", "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    for words in ("What this run shows", "Gradient flow", "Composite mixing gain"):
        assert words in html
    data = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["depth"]) for r in data["runs"]] == [
        (v, d) for d in QUICK.depths for v in QUICK.variants
    ]
    mhc = [r for r in data["runs"] if r["variant"] == "mhc"]
    assert all(abs(g - 1.0) < 1e-3 for r in mhc for g in r["gains"])
    assert all(len(r["accuracy"]) == len(r["steps"]) > 1 for r in data["runs"])
    # an existing report is kept unless --overwrite
    assert main(["transformers", "--quick", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
