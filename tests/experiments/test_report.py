"""skipkit.experiments.report: a self-contained HTML report that others can extend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from skipkit.experiments import DegradationResult, ModelRun
from skipkit.experiments.report import (
    Report,
    degradation_report,
    html_table,
    png_bytes,
    write_degradation_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(p56: float) -> DegradationResult:
    def run(name: str, depth: int, skip: bool, err: float) -> ModelRun:
        curve = [0.9, 0.5, err]
        return ModelRun(name, depth, skip, 1000 * depth, err, err + 0.05, 0.2, curve, curve)

    runs = [
        run("plain-20", 20, False, 0.02),
        run("plain-56", 56, False, p56),
        run("residual-20", 20, True, 0.01),
        run("residual-56", 56, True, 0.005),
    ]
    return DegradationResult("mnist1d", [20, 56], {"epochs": 3, "lr": 0.1}, runs, 90.0)


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_png_bytes_accepts_figures_bytes_and_paths(tmp_path: Path) -> None:
    png = png_bytes(_figure())
    assert png.startswith(PNG_MAGIC)
    (tmp_path / "a.png").write_bytes(png)
    assert png_bytes(tmp_path / "a.png") == png_bytes(str(tmp_path / "a.png")) == png
    with pytest.raises(TypeError, match="cannot embed int"):
        png_bytes(3)


def test_report_sections_are_self_contained_and_escaped(tmp_path: Path) -> None:
    report = Report("Title <1>", subtitle="sub & more")
    report.add_section("First", "<p>body</p>", {"a <caption>": _figure()})
    report.add_section("Zeroth", "<p>inserted</p>", index=0)
    report.add_section("Table", html_table(["k", "v"], [["<x>", 1]]))
    path = report.write(tmp_path / "r.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert [s.title for s in report.sections] == ["Zeroth", "First", "Table"]
    assert page.index("Zeroth") < page.index("First")
    assert "Title &lt;1&gt;" in page and "a &lt;caption&gt;" in page and "&lt;x&gt;" in page
    # nothing outside the file is referenced
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not list(tmp_path.glob(".*.tmp"))


def test_degradation_report_explains_the_numbers() -> None:
    page = degradation_report(_result(p56=0.4)).to_html()
    assert "plain-56 ends at <b>40.00%</b>" in page
    assert "The degradation problem shows" in page
    assert page.count("data:image/png;base64,") == 2
    assert "residual-56" in page and "He et al." in page
    page = degradation_report(_result(p56=0.02)).to_html()
    assert "did not show clearly" in page


def test_write_degradation_report_files_and_extension(tmp_path: Path) -> None:
    def extend(report: Report) -> None:
        report.add_section("Gradient flow", "<p>later</p>", [("grad", _figure())])

    path = write_degradation_report(_result(0.4), tmp_path, extend=extend)
    assert path == tmp_path / "report.html"
    for name in ("degradation.png", "final_errors.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert DegradationResult.load(tmp_path / "results.json") == _result(0.4)
    page = path.read_text()
    assert "Gradient flow" in page and page.count("data:image/png;base64,") == 3


def test_results_json_carries_every_sections_data_and_the_environment(tmp_path: Path) -> None:
    import json
    import math

    def extend(report: Report) -> None:
        report.add_section("Loss landscape", "<p>x</p>", data={"nonconvex": [0.1, math.nan]})
        report.add_section("No numbers", "<p>y</p>")

    write_degradation_report(_result(0.4), tmp_path, extend=extend)
    doc = json.loads((tmp_path / "results.json").read_text(), parse_constant=None)
    assert doc["sections"] == {"loss_landscape": {"nonconvex": [0.1, None]}}
    assert set(doc["environment"]) == {"torch", "cpu_capability", "cpu_count", "python"}
    assert DegradationResult.from_dict(doc) == _result(0.4)  # the runs are still readable


def test_section_keys_and_data() -> None:
    report = Report("t")
    s = report.add_section("Lesion study (Veit et al.)", data={"a": 1})
    assert s.key == "lesion_study_veit_et_al"
    assert report.data() == {"lesion_study_veit_et_al": {"a": 1}}
