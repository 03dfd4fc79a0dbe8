"""Every bad input of every subcommand: exit status 2, one line on stderr, no traceback, and
nothing on disk changed (the earlier run, the user's files, the working directory)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch

from skipkit import cli

RESNET = ["--model", "resnet20", "--dataset", "synthetic"]
NO_CUDA = not torch.cuda.is_available()


class _Foreign:
    """Pickled into a .pt file: weights_only=True must refuse it."""


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workspace with an earlier training run, a user's folder and broken weight files."""
    root = tmp_path_factory.mktemp("space")
    old_cwd, old_cache = os.getcwd(), os.environ.get("SKIPKIT_CACHE")
    os.environ["SKIPKIT_CACHE"] = str(root / "cache")
    os.chdir(root)
    argv = ["train", *RESNET, "--epochs", "1", "--batch-size", "256", "--out", "run", "--quiet"]
    assert cli.main(argv) == 0
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's notes")
    (root / "a-file").write_text("not a folder")
    w = root / "weights"
    w.mkdir()
    (w / "junk.pt").write_text("hello")
    (w / "empty.safetensors").write_bytes(b"")
    good = (root / "run" / "model.safetensors").read_bytes()
    (w / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"fc.weight": _Foreign()}, w / "unsafe.pt")
    safetensors.torch.save_file({"other": torch.zeros(2)}, str(w / "foreign.safetensors"))
    os.mkfifo(w / "pipe.safetensors")
    try:
        yield root
    finally:
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("SKIPKIT_CACHE", None)
        else:
            os.environ["SKIPKIT_CACHE"] = old_cache


def _snapshot(root: Path) -> dict[str, object]:
    state: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("cache"):
            continue  # the MNIST-1D cache may be built by a run that fails later
        mode = p.lstat().st_mode
        if stat.S_ISREG(mode):
            state[rel] = p.read_bytes()
        else:
            state[rel] = stat.S_IFMT(mode)  # folders, the pipe: never read
    return state


T = ["train", *RESNET]
D = ["degradation", "--dataset", "synthetic", "--depths", "8"]
G = ["gradflow", "--model", "resnet20", "--variants", "skip"]
L = ["landscape", "--model", "resnet20"]
A = ["advise", "--model", "resnet20"]
W = "weights/"

CASES: list[tuple[list[str], str]] = [
    # train: every number checked at parse time
    *[([*T, "--lr", v], "argument --lr") for v in ("inf", "nan", "-1", "0", "1e300", "fast")],
    *[([*T, "--momentum", v], "argument --momentum") for v in ("nan", "1", "-0.1", "inf")],
    *[([*T, "--weight-decay", v], "argument --weight-decay") for v in ("nan", "-1", "2", "inf")],
    *[([*T, "--gamma", v], "argument --gamma") for v in ("nan", "0", "1.5")],
    *[([*T, "--grad-clip", v], "argument --grad-clip") for v in ("-1", "0", "nan", "inf")],
    *[([*T, "--label-smoothing", v], "argument --label") for v in ("-0.5", "1", "nan")],
    *[([*T, "--warmup-epochs", v], "argument --warmup-epochs") for v in ("-1", "nan")],
    *[([*T, "--epochs", v], "argument --epochs") for v in ("0", "-3", "1.5", "abc", "1000000")],
    *[([*T, "--batch-size", v], "argument --batch-size") for v in ("0", "-1", "1000000000")],
    *[([*T, "--seed", v], "argument --seed") for v in ("-1", str(2**40), "x")],
    *[([*T, "--num-workers", v], "argument --num-workers") for v in ("-1", "1000")],
    *[([*T, "--device", v], "unknown device") for v in ("gpu", "meta", "cpu:1", "tpu")],
    *([([*T, "--device", v], "needs a CUDA GPU") for v in ("cuda", "cuda:0")] if NO_CUDA else []),
    ([*T, "--schedule", "linear"], "invalid choice"),
    ([*T, "--optimizer", "adam"], "invalid choice"),
    ([*T, "--amp", "fp8"], "invalid choice"),
    ([*T, "--on-nan", "ignore"], "invalid choice"),
    ([*T, "--milestones", "x"], "comma-separated integers"),
    ([*T, "--model-arg", "x"], "KEY=VALUE"),
    ([*T, "--model-arg", "colour=1"], "cannot build resnet20"),
    ([*T, "--model-arg", "num_classes=3"], "num_classes >= 10"),
    ([*T, "--model-arg", "in_channels=3"], "cannot take the training data"),
    ([*T, "--model-arg", "num_classes=1e400"], "expected a finite number"),
    # train: settings that would be recorded but not used, or contradict each other
    ([*T, "--optimizer", "adamw", "--momentum", "0.5"], "--momentum is an SGD setting"),
    ([*T, "--gamma", "0.5"], "--schedule step only"),
    ([*T, "--milestones", "3"], "--schedule step only"),
    ([*T, "--schedule", "step", "--milestones", "99", "--epochs", "3"], "--milestones must"),
    ([*T, "--warmup-epochs", "5", "--epochs", "2"], "exceeds --epochs"),
    ([*T, "--nesterov", "--optimizer", "adamw"], "nesterov"),
    ([*T, "--out", "run", "--resume", "--overwrite"], "not allowed with argument"),
    ([*T, "--resume"], "--resume needs --out"),
    (["train", "--model", "resnet21"], "unknown model 'resnet21'"),
    (["train", "--model", "resnet20", "--dataset", "imagenet"], "unknown dataset"),
    (["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", "nope"], "CIFAR-10"),
    (["train", "--model", "resnet20", "--dataset", "cifar100"], "needs a data folder"),
    # train: output folders
    ([*T, "--out", "a-file"], "a-file is a file"),
    ([*T, "--out", "a-file/sub"], "cannot be created: a-file is a file"),
    ([*T, "--out", "run"], "holds an earlier 'train' run; continue it with --resume"),
    ([*T, "--out", "mine"], "holds files skipkit did not write (notes.txt)"),
    ([*T, "--out", "mine", "--resume"], "did not write"),
    ([*T, "--out", "weights"], "did not write"),
    # train --resume: every difference from the checkpoint is refused, old -> new
    ([*T, "--out", "run", "--resume", "--lr", "0.05"], "lr 0.1 -> 0.05"),
    ([*T, "--out", "run", "--resume", "--no-skip"], "model_options.skip true -> false"),
    ([*T, "--out", "run", "--resume", "--seed", "5"], "seed 0 -> 5"),
    ([*T, "--out", "run", "--resume", "--batch-size", "64"], "batch_size 256 -> 64"),
    ([*T, "--out", "run", "--resume", "--weight-decay", "0"], "weight_decay 0.0001 -> 0.0"),
    ([*T, "--out", "run", "--resume", "--momentum", "0.5"], "momentum 0.9 -> 0.5"),
    ([*T, "--out", "run", "--resume", "--schedule", "cosine"], '"onecycle" -> "cosine"'),
    ([*T, "--out", "run", "--resume", "--optimizer", "adamw"], '"sgd" -> "adamw"'),
    ([*T, "--out", "run", "--resume", "--label-smoothing", "0.1"], "label_smoothing 0.0 -> 0.1"),
    ([*T, "--out", "run", "--resume", "--grad-clip", "1"], "grad_clip null -> 1.0"),
    ([*T, "--out", "run", "--resume", "--model-arg", "shortcut='B'"], "model_options.shortcut"),
    (
        ["train", "--model", "resnet32", "--dataset", "synthetic", "--out", "run", "--resume"],
        '"resnet20" -> "resnet32"',
    ),
    (["train", "--model", "resnet20", "--out", "run", "--resume"], '"synthetic" -> "mnist1d"'),
    # degradation
    ([*D[:-1], "20,57"], "depth 57 is not 6n+2"),
    ([*D[:-1], "20,x"], "comma-separated integers"),
    ([*D[:-1], "0"], "depth 0 is not 6n+2"),
    ([*D[:-1], "1208"], "deeper than 1202"),
    ([*D[:-1], ","], "give at least one depth"),
    ([*D, "--epochs", "0"], "argument --epochs"),
    ([*D, "--lr", "nan"], "argument --lr"),
    ([*D, "--momentum", "1"], "argument --momentum"),
    ([*D, "--weight-decay", "-1"], "argument --weight-decay"),
    ([*D, "--seed", "-1"], "argument --seed"),
    ([*D, "--workers", "0"], "argument --workers"),
    ([*D, "--batch-size", "0"], "argument --batch-size"),
    ([*D, "--schedule", "x"], "invalid choice"),
    ([*D, "--device", "gpu"], "unknown device"),
    (["degradation", "--dataset", "imagenet", "--depths", "8"], "unknown dataset"),
    ([*D, "--out", "a-file"], "a-file is a file"),
    ([*D, "--out", "run"], "holds a 'skipkit train' run"),
    ([*D, "--out", "mine"], "did not write"),
    ([*D, "--resume"], "--resume needs --out"),
    ([*D, "--out", "x", "--resume", "--overwrite"], "not allowed with argument"),
    # demo
    (["demo", "--workers", "0"], "argument --workers"),
    (["demo", "--out", "a-file"], "a-file is a file"),
    (["demo", "--out", "run"], "holds a 'skipkit train' run"),
    (["demo", "--resume"], "--resume needs --out"),
    (["demo", "--bogus"], "unrecognized arguments"),
    # gradflow
    ([*G[:-1], "sometimes"], "invalid choice"),
    ([*G, "--examples", "0"], "argument --examples"),
    ([*G, "--seed", "-1"], "argument --seed"),
    ([*G, "--device", "gpu"], "unknown device"),
    ([*G, "--weights", W + "missing.safetensors"], "does not exist"),
    ([*G, "--weights", W + "junk.pt"], "weights/junk.pt"),
    ([*G, "--weights", "http://127.0.0.1:9/w.pt"], "cannot fetch --weights"),
    ([*G[:-1], "both", "--weights", "run/model.safetensors"], "--weights fits one model"),
    (["gradflow", "--model", "resnet21"], "unknown model 'resnet21'"),
    ([*G, "--model-arg", "num_classes=3"], "num_classes >= 10"),
    ([*G, "--out", "a-file"], "a-file is a file"),
    ([*G, "--out", "run"], "holds a 'skipkit train' run"),
    ([*G, "--dataset", "imagenet"], "unknown dataset"),
    # landscape
    ([*L, "--steps", "0"], "argument --steps"),
    ([*L, "--steps", "1000000"], "use --steps"),
    ([*L, "--dims", "3"], "invalid choice"),
    ([*L, "--span", "1", "-1"], "needs LOW < HIGH"),
    ([*L, "--span", "nan", "1"], "argument --span"),
    ([*L, "--batch-size", "0"], "argument --batch-size"),
    ([*L, "--examples", "0"], "argument --examples"),
    ([*L, "--train-epochs", "-1"], "argument --train-epochs"),
    ([*L, "--weights", W + "missing.pt"], "does not exist"),
    ([*L, "--weights", W + "empty.safetensors"], "is empty"),
    ([*L, "--weights", W + "truncated.safetensors"], "not a readable safetensors file"),
    ([*L, "--weights", W + "pipe.safetensors"], "not a regular file"),
    ([*L, "--weights", W + "foreign.safetensors"], "does not fit this model"),
    ([*L, "--interpolate", W + "nope-a", W + "nope-b"], "does not exist"),
    ([*L, "--interpolate", "a", "b", "--weights", "c"], "either --weights"),
    ([*L, "--out", "x", "--resume", "--overwrite"], "not allowed with argument"),
    ([*L, "--out", "run"], "holds a 'skipkit train' run"),
    (["landscape", "--model", "resnet21"], "unknown model 'resnet21'"),
    # advise
    ([*A, "--block", "0"], "argument --block"),
    ([*A, "--min-decades", "0"], "argument --min-decades"),
    ([*A, "--min-decades", "nan"], "argument --min-decades"),
    ([*A, "--max", "0"], "argument --max"),
    ([*A, "--validate-epochs", "-1"], "argument --validate-epochs"),
    ([*A, "--validate-examples", "0"], "argument --validate-examples"),
    ([*A, "--out", "a-file"], "a-file is a file"),
    ([*A, "--weights", W + "unsafe.pt"], "weights_only=True"),
    ([*A, "--model-arg", "num_classes=3"], "num_classes >= 10"),
    # models and the top level
    (["models", "nothing*"], "no registered model matches"),
    (["fly"], "invalid choice: 'fly'"),
    ([], "required: COMMAND"),
    (["--bogus", "models"], "unrecognized arguments"),
]


def test_there_are_more_than_100_cases() -> None:
    assert len(CASES) >= 100
    commands = {argv[0] for argv, _ in CASES if argv and not argv[0].startswith("-")}
    assert {"train", "degradation", "demo", "gradflow", "landscape", "advise", "models"} <= commands


@pytest.mark.parametrize(("argv", "needle"), CASES, ids=[" ".join(a)[-60:] for a, _ in CASES])
def test_bad_input_is_one_line_status_2_and_touches_nothing(
    space: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(space)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("skipkit: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert _snapshot(space) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(space: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = space / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    try:
        assert cli.main([*T, "--out", "ro"]) == 2
        assert "ro is not writable" in capsys.readouterr().err
        assert cli.main([*T, "--out", "ro/sub"]) == 2
        assert "cannot be created in ro" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)
