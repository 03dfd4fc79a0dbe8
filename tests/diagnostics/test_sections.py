"""The demo's report sections: built from the demo's run folder, embeddable, JSON data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skipkit.diagnostics.sections import ReportSection, report_sections
from skipkit.experiments.degradation import build_model
from skipkit.experiments.report import Report
from skipkit.train import save_weights, seed_everything


def test_sections_from_a_demo_folder(tmp_path: Path) -> None:
    for skip in (False, True):  # what the demo leaves behind, for depth 8
        seed_everything(0)
        folder = tmp_path / "runs" / f"{'residual' if skip else 'plain'}-8"
        folder.mkdir(parents=True)
        save_weights(build_model(8, skip=skip), folder / "model.safetensors")
    sections = report_sections(tmp_path, depths=(8,), landscape_depth=8, quick=True)
    assert [s.title for s in sections] == ["Gradient flow", "Loss landscape"]
    flow, land = sections
    assert isinstance(flow, ReportSection)
    assert len(flow.images) == 2  # at init, and the trained weights (He et al. Fig. 7)
    assert "plain-8" in flow.html and "ResNet-8" in flow.html and "<table>" in flow.html
    assert "trained ResNet-8" in land.html and "5×5 grid" in land.html
    for s in sections:
        assert all(png[:4] == b"\x89PNG" for _, png in s.images)
        json.dumps(s.data, allow_nan=False)
    report = Report("demo")
    for s in sections:
        report.add_section(s.title, s.html, s.images)
    assert report.write(tmp_path / "report.html").read_text().count("<img") == 3


def test_sections_train_what_is_missing() -> None:
    with pytest.raises(ValueError, match="6n"):
        report_sections(None, depths=(9,), quick=True)
