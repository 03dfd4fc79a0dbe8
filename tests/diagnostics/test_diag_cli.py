"""``skipkit gradflow | landscape | advise`` through ``skipkit.cli.main``: help, files, resume,
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skipkit import cli
from skipkit.diagnostics import Landscape

DATA = ["--dataset", "synthetic"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["gradflow", "landscape", "advise"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and f"skipkit {command}" in out and "--out" in out
    code, out, _ = run(["--help"], capsys)
    assert command in out


def test_gradflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["gradflow", "--model", "resnet20", *DATA, "--examples", "16", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 0, out
    doc = json.loads((tmp_path / "gradflow.json").read_text())
    names = [f["name"] for f in doc["flows"]]
    assert names == ["resnet20 (plain)", "resnet20 (skips)"]
    assert all(len(f["layers"]) == 20 for f in doc["flows"])
    assert (tmp_path / "gradflow.png").read_bytes()[:4] == b"\x89PNG"
    assert "resnet20 (plain)" in out and "decades" in out


def test_landscape_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "landscape",
        "--model",
        "resnet20",
        *DATA,
        "--examples",
        "24",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    first = Landscape.load(tmp_path / "landscape.npz")
    assert first.loss.shape == (3, 3) and np.isfinite(first.loss).all()
    doc = json.loads((tmp_path / "landscape.json").read_text())
    assert doc["dims"] == 2 and doc["meta"]["examples"] == 24
    assert (tmp_path / "landscape.png").read_bytes()[:4] == b"\x89PNG"
    code, _, _ = run([*argv, "--resume"], capsys)  # everything is done: read back, same grid
    assert code == 0
    assert np.array_equal(Landscape.load(tmp_path / "landscape.npz").loss, first.loss)
    code, _out, err = run([*argv[:-3], "--dims", "1", "--out", str(tmp_path / "1d")], capsys)
    assert code == 0, err
    assert Landscape.load(tmp_path / "1d" / "landscape.npz").loss.shape == (3,)


def test_advise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["advise", "--model", "resnet56", "--no-skip", *DATA, "--examples", "32"]
    code, out, err = run([*argv, "--max", "5", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "advice.json").read_text())
    assert len(doc["suggestions"]) == 5
    assert {"src", "dst", "merge", "shortcut", "reason", "score"} <= set(doc["suggestions"][0])
    assert "5 skip(s) suggested" in out and "why:" in out
    assert (tmp_path / "gradflow.png").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["gradflow", "--model", "resnet21"], "unknown model 'resnet21'"),
        (["gradflow", "--model", "resnet20", "--weights", "w.pt"], "--weights fits one model"),
        (["landscape", "--model", "resnet20", "--dataset", "imagenet"], "unknown dataset"),
        (["advise", "--model", "resnet20", "--weights", "/nonexistent.pt"], "does not exist"),
    ],
)
def test_user_errors(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("skipkit: error")]
    assert len(lines) == 1 and needle in lines[0]
