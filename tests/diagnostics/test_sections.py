"""The demo's report sections: built from the demo's run folder, embeddable, JSON data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skipkit.diagnostics.sections import ReportSection, report_sections
from skipkit.experiments.degradation import build_model
from skipkit.experiments.report import Report
from skipkit.train import save_weights, seed_everything

TITLES = ["Gradient flow", "Shattered gradients", "Loss landscape", "Lesion study"]


def _demo_folder(tmp_path: Path, depth: int = 8) -> Path:
    for skip in (False, True):  # what the demo leaves behind
        seed_everything(0)
        folder = tmp_path / "runs" / f"{'residual' if skip else 'plain'}-{depth}"
        folder.mkdir(parents=True)
        save_weights(build_model(depth, skip=skip), folder / "model.safetensors")
    return tmp_path


def test_sections_from_a_demo_folder(tmp_path: Path) -> None:
    sections = report_sections(_demo_folder(tmp_path), depths=(8,), quick=True)
    assert [s.title for s in sections] == TITLES
    flow, shatter, land, les = sections
    assert isinstance(flow, ReportSection)
    assert len(flow.images) == 2  # at init, and the trained weights (He et al. Fig. 7)
    assert "plain-8" in flow.html and "ResNet-8" in flow.html and "<table>" in flow.html
    assert "trained ResNet-8" in land.html and "5×5 grid" in land.html
    assert len(shatter.images) == 2 and "In this run" in shatter.html
    assert "ResNet-8" in les.html and "chance: 90%" in les.html
    for s in sections:
        assert all(png[:4] == b"\x89PNG" for _, png in s.images)
        json.dumps(s.data, allow_nan=False)
    report = Report("demo")
    for s in sections:
        report.add_section(s.title, s.html, s.images, data=s.data)
    assert report.write(tmp_path / "report.html").read_text().count("<img") == 6
    assert list(report.data()) == [
        "gradient_flow",
        "shattered_gradients",
        "loss_landscape",
        "lesion_study",
    ]


def test_section_data_are_the_numbers_in_the_text(tmp_path: Path) -> None:
    sections = report_sections(_demo_folder(tmp_path, 14), depths=(8, 14), quick=True)
    shatter, land, les = sections[1:]
    assert [r["name"] for r in shatter.data["init"]] == [
        "plain-8",
        "ResNet-8",
        "plain-14",
        "ResNet-14",
    ]
    assert [r["name"] for r in shatter.data["trained"]] == ["plain-14", "ResNet-14"]
    lag1 = shatter.data["init"][2]["correlation"][1]
    assert f"{lag1:.3f}" in shatter.html
    assert land.data["depth"] == 14 and len(land.data["landscapes"]) == 2
    shares = [s["nonconvex"] for s in land.data["summary"]]
    assert all(f"{100 * v:.0f}%" in land.html for v in shares)
    res, plain = les.data["lesions"]
    assert (res["name"], res["plain"], plain["name"], plain["plain"]) == (
        "ResNet-14",
        False,
        "plain-14",
        True,
    )
    assert len(res["blocks"]) == len(plain["blocks"]) == 6
    assert [b["name"] for b in plain["blocks"] if b["error"] is None] == ["layer2.0", "layer3.0"]
    assert {s["k"] for s in res["sets"]} == {2}
    assert f"{100 * res['error']:.1f}%" in les.html


def test_sections_train_what_is_missing() -> None:
    with pytest.raises(ValueError, match="6n"):
        report_sections(None, depths=(9,), quick=True)
    with pytest.raises(ValueError, match="6n"):
        report_sections(None, depths=(8,), landscape_depth=10, quick=True)
