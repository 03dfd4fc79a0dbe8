"""The ``skipkit`` command as a user runs it: no result is ever lost (earlier runs, the user's
files, two runs at once), help without torch, and real processes failing in one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import skipkit.models as models
from skipkit import cli

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = ["train", "--model", "resnet20", "--dataset", "synthetic", "--batch-size", "256"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "SKIPKIT_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }


def _skipkit(args: list[str], tmp_path: Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "skipkit.cli", *args],
        env=_env(tmp_path),
        cwd=cwd or tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------- nothing lost


def test_out_dot_beside_user_files_refuses_and_overwrite_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "thesis.tex").write_text("three years")
    (work / "data" / "x.csv").write_text("1,2\n")
    (work / "metrics.json.bak").write_text("{}")
    monkeypatch.chdir(work)
    before = _snapshot(work)
    assert cli.main([*TRAIN, "--epochs", "1", "--out", ".", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds files skipkit did not write (data/, metrics.json.bak, thesis.tex)" in err
    assert _snapshot(work) == before
    assert cli.main([*TRAIN, "--epochs", "1", "--out", ".", "--quiet", "--overwrite"]) == 0
    assert {k: v for k, v in _snapshot(work).items() if k in before} == before
    # a second --overwrite removes what the first run wrote, and only that
    first = json.loads((work / "skipkit-run.json").read_text())["files"]
    assert "metrics.csv" in first and "thesis.tex" not in first
    assert cli.main([*TRAIN, "--epochs", "1", "--out", ".", "--quiet", "--overwrite"]) == 0
    assert {k: v for k, v in _snapshot(work).items() if k in before} == before


def test_fresh_run_into_an_earlier_run_refuses_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli.main([*TRAIN, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    (out / "my-plot.png").write_bytes(b"mine")
    before = _snapshot(out)
    assert cli.main([*TRAIN, "--epochs", "2", "--out", str(out), "--quiet", "--lr", "bad"]) == 2
    assert cli.main([*TRAIN, "--epochs", "2", "--out", str(out), "--quiet"]) == 2
    assert "holds files skipkit did not write (my-plot.png)" in capsys.readouterr().err
    assert _snapshot(out) == before
    (out / "my-plot.png").unlink()
    assert cli.main([*TRAIN, "--epochs", "2", "--out", str(out), "--quiet"]) == 2
    assert "holds an earlier 'train' run" in capsys.readouterr().err
    assert cli.main([*TRAIN, "--epochs", "2", "--out", str(out), "--quiet", "--resume"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2


def test_default_out_is_a_new_folder_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert cli.main([*TRAIN, "--epochs", "1", "--quiet"]) == 0
    runs = sorted((tmp_path / "runs" / "train").iterdir())
    assert len(runs) == 2 and all((r / "model.safetensors").is_file() for r in runs)
    out = capsys.readouterr().out
    assert all(f"weights: {r.relative_to(tmp_path) / 'model.safetensors'}" in out for r in runs)


@pytest.mark.slow
def test_two_concurrent_runs_into_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    argv = [*TRAIN, "--epochs", "3", "--out", str(out), "--quiet"]
    procs = [_skipkit(argv, tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert loser.count("\n") == 1 and "Traceback" not in loser
    assert "in use by a live skipkit run (pid" in loser or "holds an earlier 'train' run" in loser
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in doc["epochs"]] == [1, 2, 3]
    assert not (out / ".skipkit-run.lock").exists()


def test_overwrite_leaves_foreign_files_in_nested_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deg"
    argv = ["degradation", "--depths", "8", "--dataset", "synthetic", "--epochs", "1"]
    argv += ["--workers", "1", "--out", str(out), "--quiet", "--batch-size", "256"]
    assert cli.main(argv) == 0
    (out / "runs" / "plain-8" / "notes.txt").write_text("keep me")
    (out / "mine.txt").write_text("and me")
    assert cli.main(argv) == 2
    assert "did not write (mine.txt, runs/plain-8/notes.txt)" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0
    assert (out / "runs" / "plain-8" / "notes.txt").read_text() == "keep me"
    assert (out / "mine.txt").read_text() == "and me"
    assert json.loads((out / "results.json").read_text())["depths"] == [8]


# ------------------------------------------------------------------------------------ help


@pytest.mark.parametrize(
    "command", ["demo", "degradation", "train", "models", "gradflow", "landscape", "advise"]
)
def test_help_shows_every_default_one_way_and_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr]
    for action in sub._actions:
        if action.dest == "help" or action.required:
            continue
        assert "(default: " in sub._get_formatter()._expand_help(action) or "%(default" in (
            action.help or ""
        ), (command, action.dest)
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:\n  skipkit " + command in text
    assert "(default: " in text and "%(default)" not in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("skipkit 0.")


def test_help_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import skipkit\n"
        "before = 'torch' in sys.modules\n"
        "from skipkit import cli\n"
        "for argv in (['--help'], ['train', '--help'], ['landscape', '--help'],\n"
        "             ['transformers', '--help'], ['--version']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(before, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.split()[-2:]
    assert (before, after) == ("False", "False")


def test_help_loads_only_the_parsers(tmp_path: Path) -> None:
    # the torch-free part of --help that does not depend on the package __init__
    code = (
        "import sys\n"
        "import skipkit\n"
        "before = set(sys.modules)\n"
        "from skipkit import cli\n"
        "for argv in (['--help'], ['train', '--help'], ['gradflow', '--help']):\n"
        "    cli.main(argv)\n"
        "print(' '.join(sorted(m for m in set(sys.modules) - before if 'skipkit' in m)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split("\n")[-2].split())
    assert loaded <= {
        "skipkit.cli",
        "skipkit._cliargs",
        "skipkit._cli_train",
        "skipkit._cli_diagnostics",
        "skipkit._cli_transformer",
        "skipkit._lazy",  # the loader of the handlers (standard library only)
    }


# ------------------------------------------------------------------------- real processes


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([*TRAIN, "--lr", "inf"], "argument --lr: expected a finite number in (0, 10], got inf"),
        ([*TRAIN, "--device", "gpu"], "unknown device 'gpu'"),
        ([*TRAIN, "--model-arg", "num_classes=3"], "num_classes >= 10"),
        (["landscape", "--model", "resnet20", "--steps", "1000000"], "use --steps"),
        (
            ["gradflow", "--weights", "nope.safetensors", "--variants", "skip", "--model", "x"],
            "unknown model 'x'",
        ),
    ],
)
def test_real_process_bad_input_is_one_line(argv: list[str], needle: str, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _skipkit(argv, tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("skipkit: error: ") and needle in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [
        n for n in before if n != "cache"
    ]


class _DivergesAtStep3(nn.Module):
    """A classifier whose training loss becomes NaN at its third training forward pass."""

    def __init__(self, num_classes: int, in_channels: int, **_: Any) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * 40, num_classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        self.calls += self.training
        return y * math.nan if self.training and self.calls >= 3 else y


@pytest.fixture(scope="module")
def diverging_model() -> str:
    name = "_test_diverges_at_step3"
    if not models.is_registered(name):
        models.register_model(lambda **kw: _DivergesAtStep3(**kw), name=name)
    return name


def test_diverging_training_stops_with_one_line_and_status_3(
    tmp_path: Path, diverging_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", diverging_model, "--dataset", "synthetic", "--epochs", "3"]
    argv += ["--batch-size", "256", "--quiet", "--out", str(out)]  # 2 steps per epoch
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "training stopped: non-finite loss (nan) at batch 1 in epoch 2, step 2" in err
    assert f"the last good checkpoint (epoch 1) is kept in {out}" in err and "--on-nan skip" in err
    # resuming with --on-nan skip is allowed; here every batch of epoch 3 is NaN, so it stops
    assert cli.main([*argv, "--resume", "--on-nan", "skip"]) == 3
    err = capsys.readouterr().err
    assert "every batch of the epoch had a non-finite loss in epoch 3" in err.splitlines()[-1]
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2
