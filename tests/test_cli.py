"""The ``skipkit`` command: help everywhere, one-line errors with status 2, real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skipkit import cli

COMMANDS = ("demo", "degradation", "train", "models")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0 and f"skipkit {command}" in out


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["models"], capsys)
    assert code == 0 and {"resnet20", "resnet56"} <= set(out.split())
    code, out, _ = _run(["models", "resnet5?"], capsys)
    assert code == 0 and "resnet56" in out.split() and "resnet20" not in out.split()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--model", "resnet21"], "unknown model 'resnet21'"),
        (["train", "--model", "resnet20", "--dataset", "imagenet"], "unknown dataset"),
        (["degradation", "--depths", "20,57"], "depth 57 is not 6n+2"),
        (["degradation", "--depths", "20,x"], "comma-separated integers"),
        (["degradation", "--epochs", "abc"], "expected a whole number, got 'abc'"),
        (["train", "--model", "resnet20", "--lr", "fast"], "expected a number, got 'fast'"),
        (
            ["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", "/nope"],
            "--download",
        ),
        (["train", "--model", "resnet20", "--dataset", "cifar100"], "needs a data folder"),
        (["train", "--model", "resnet20", "--model-arg", "x"], "KEY=VALUE"),
        (["train", "--model", "resnet20", "--model-arg", "colour=1"], "cannot build resnet20"),
        (["train", "--model", "resnet20", "--epochs", "0"], "expected a number >= 1"),
        (["models", "nothing*"], "no registered model matches"),
        (["fly"], "invalid choice: 'fly'"),
        ([], "required: COMMAND"),
    ],
)
def test_user_errors_are_one_line_and_status_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("skipkit: error: ") and needle in lines[0]
    assert "Traceback" not in err and out == ""


def test_traceback_flag_reraises(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        cli.main(["--traceback", "train", "--model", "resnet21"])


def test_train_writes_weights_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    argv = ["train", "--model", "resnet20", "--dataset", "synthetic", "--epochs", "1"]
    argv += ["--no-skip", "--out", str(out_dir), "--quiet", "--model-arg", "shortcut='B'"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "resnet20 (plain): train error" in out
    assert (out_dir / "model.safetensors").is_file()
    rows = json.loads((out_dir / "metrics.json").read_text())["epochs"]
    assert len(rows) == 1
    # a second call with --resume has nothing left to do and keeps the history
    code, _, err = _run([*argv, "--resume"], capsys)
    assert code == 0, err
    assert len(json.loads((out_dir / "metrics.json").read_text())["epochs"]) == 1


def test_degradation_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["degradation", "--depths", "8", "--dataset", "synthetic", "--epochs", "1"]
    argv += ["--workers", "1", "--out", str(tmp_path), "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "plain-8" in out and "residual-8" in out and "report:" in out
    for name in ("report.html", "results.json", "degradation.png", "final_errors.png"):
        assert (tmp_path / name).is_file()


def test_extensions_add_subcommands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "skipkit_test_ext.py").write_text(
        textwrap.dedent(
            """
            def add_parsers(sub):
                p = sub.add_parser("hello", help="say hello")
                p.add_argument("--name", default="world")
                p.set_defaults(func=lambda args: print("hello", args.name) or 0)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "EXTENSIONS", ("skipkit_not_installed", "skipkit_test_ext"))
    code, out, _ = _run(["hello", "--name", "skips"], capsys)
    assert code == 0 and out.strip() == "hello skips"


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "SKIPKIT_CACHE": str(tmp_path / "cache"),
    }
    out_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "skipkit.cli", "demo", "--quick", "--out", str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # about 2 minutes on a busy 2-core machine; the limit is for a hang
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out_dir / 'report.html'}" in proc.stdout
    page = (out_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<table>" in page
    assert "Gradient flow" in page and "Loss landscape" in page  # the diagnostics sections
    results = json.loads((out_dir / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == [
        "plain-8",
        "plain-14",
        "residual-8",
        "residual-14",
    ]
    assert all(len(r["train_curve"]) == 2 for r in results["runs"])
