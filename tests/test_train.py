"""skipkit.train: schedules, determinism, exact resume after a kill, atomic files, DDP, outputs."""

from __future__ import annotations

import csv
import json
import math
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from skipkit import CheckpointError
from skipkit._io import atomic_write_bytes
from skipkit._runs import RunFolder, open_run
from skipkit.data import synthetic
from skipkit.train import (
    METRIC_FIELDS,
    Callback,
    TrainConfig,
    Trainer,
    load_weights,
    lr_factor,
    seed_everything,
)
from skipkit.train.checkpoint import read_checkpoint, write_checkpoint

# The same code runs in this process and in subprocesses (killed runs, torchrun workers).
SCRIPT = r"""
import os, signal, sys
import torch
from torch import nn
from skipkit.data import synthetic
from skipkit.train import Callback, Trainer, TrainConfig, seed_everything, save_weights, teardown


def make_model(bn=True):
    seed_everything(0)
    norm = nn.BatchNorm1d(6) if bn else nn.Identity()
    return nn.Sequential(
        nn.Conv1d(1, 6, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 12, 4)
    )


def data():
    return synthetic(192, shape=(1, 12), num_classes=4, noise=1.0, n_test=40, seed=1)


class KillAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def run(out_dir, kill_at=None, resume=False, epochs=4, **kw):
    train, test = data()
    callbacks = [KillAt(kill_at)] if kill_at else []
    cfg = TrainConfig(epochs=epochs, batch_size=16, out_dir=out_dir, resume=resume, quiet=True,
                      **kw)
    trainer = Trainer(make_model(), train, test, cfg, callbacks=callbacks)
    trainer.fit()
    return trainer


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "kill":
        run(out, kill_at=2)
    elif mode == "ddp":
        rank = int(os.environ["RANK"])
        train, test = data()
        for name, bn, batch in (("bn", True, 16), ("nobn", False, 8)):
            cfg = TrainConfig(epochs=2, batch_size=batch, quiet=True, out_dir=f"{out}/{name}")
            trainer = Trainer(make_model(bn=bn), train, test, cfg)
            trainer.fit()
            save_weights(trainer.model, f"{out}/{name}-rank{rank}.safetensors")
        teardown()
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("script") / "train_script.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def mod(script: Path) -> dict[str, Any]:
    return runpy.run_path(str(script), run_name="train_script")


@contextmanager
def one_thread() -> Iterator[None]:
    # CPU kernels split work by thread count; compare runs under the same count
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"epochs": 0}, r"epochs must be finite and in \[1, inf\); got 0"),
        ({"lr": -1.0}, r"lr must be finite and in \(0, inf\); got -1.0"),
        ({"lr": math.inf}, "lr must be finite"),
        ({"momentum": math.nan}, "momentum must be finite"),
        ({"momentum": 1.0}, r"momentum must be finite and in \[0, 1\)"),
        ({"weight_decay": math.nan}, "weight_decay must be finite"),
        ({"gamma": math.nan}, "gamma must be finite"),
        ({"grad_clip": -1.0}, r"grad_clip must be finite and in \(0, inf\)"),
        ({"label_smoothing": -0.5}, r"label_smoothing must be finite and in \[0, 1\)"),
        ({"on_nan": "ignore"}, "on_nan must be one of stop, skip"),
        ({"resume": True, "overwrite": True, "out_dir": "x"}, "exclude each other"),
        ({"resume": True}, "needs out_dir"),
        ({"nesterov": True, "optimizer": "adamw"}, "nesterov"),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_config_round_trips_through_dict() -> None:
    cfg = TrainConfig(milestones=(3, 5), out_dir=Path("x"), betas=(0.8, 0.9))
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == TrainConfig(milestones=(3, 5), out_dir="x", betas=(0.8, 0.9))
    with pytest.raises(ValueError, match="unknown TrainConfig fields: colour"):
        TrainConfig.from_dict({"colour": 1})


def test_schedules() -> None:
    spe = 10
    one = TrainConfig(epochs=10, schedule="onecycle")
    curve = [lr_factor(one, s, spe) for s in range(100)]
    assert curve[0] == pytest.approx(1 / 25)
    assert max(curve) == pytest.approx(1.0) and curve.index(max(curve)) in range(28, 31)
    assert curve[-1] == pytest.approx(1 / 25e4)
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cos, 0, spe) == 1.0 and lr_factor(cos, 50, spe) == pytest.approx(0.5)
    step = TrainConfig(epochs=10, schedule="step", milestones=(4, 8), gamma=0.1)
    assert [lr_factor(step, s, spe) for s in (39, 40, 79, 80)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert TrainConfig(epochs=182, schedule="step").step_milestones() == (91, 136)
    warm = TrainConfig(epochs=10, schedule="none", warmup_epochs=0.5)
    assert [lr_factor(warm, s, spe) for s in (0, 4, 5, 99)] == pytest.approx([0.2, 1, 1, 1])


# ---------------------------------------------------------------------------------- training


def test_training_learns_and_writes_metrics(tmp_path: Path, mod: dict[str, Any]) -> None:
    trainer = mod["run"](tmp_path, epochs=3)
    hist = trainer.history
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3]
    assert hist[-1]["train_error"] < hist[0]["train_error"]
    assert hist[-1]["test_error"] < 0.5  # 4 classes: chance is 0.75

    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRIC_FIELDS and len(rows) == 3
    assert float(rows[2]["train_loss"]) == hist[2]["train_loss"]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["config"]["epochs"] == 3 and doc["epochs"][2]["test_error"] == hist[2]["test_error"]

    model = mod["make_model"]()
    load_weights(model, tmp_path / "model.safetensors")
    model.eval()
    ev = trainer.evaluate(mod["data"]()[1])
    assert ev["error"] == pytest.approx(hist[-1]["test_error"])
    assert not list(tmp_path.rglob("*.tmp"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch0002-model.safetensors",
        "epoch0002-state.safetensors",
        "epoch0002.json",
        "epoch0003-model.safetensors",
        "epoch0003-state.safetensors",
        "epoch0003.json",
    ]


def test_no_test_set_and_no_out_dir() -> None:
    train, _ = synthetic(32, shape=(4,), num_classes=2)
    seed_everything(0)
    hist = Trainer(nn.Linear(4, 2), train, epochs=1, batch_size=8, quiet=True).fit()
    assert math.isnan(hist[0]["test_error"]) and hist[0]["train_loss"] > 0


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path, mod: dict[str, Any]) -> None:
    with one_thread():
        mod["run"](tmp_path / "a", epochs=2)
        mod["run"](tmp_path / "b", epochs=2)
        mod["run"](tmp_path / "c", epochs=2, seed=1)
    a, b, c = (_weights(tmp_path / n / "model.safetensors") for n in "abc")
    assert _same(a, b) and not _same(a, c)


def test_adamw_nesterov_step_schedule_and_clipping_run(mod: dict[str, Any]) -> None:
    train, test = mod["data"]()
    for kw in (
        {"optimizer": "adamw", "lr": 1e-2, "schedule": "cosine", "grad_clip": 1.0},
        {"nesterov": True, "schedule": "step", "warmup_epochs": 0.5},
    ):
        hist = Trainer(mod["make_model"](), train, test, epochs=2, quiet=True, **kw).fit()
        assert all(math.isfinite(r["train_loss"]) for r in hist)


def test_callbacks_see_gradients_and_every_step(mod: dict[str, Any]) -> None:
    events: list[str] = []

    class Record(Callback):
        def on_train_start(self, trainer: Trainer) -> None:
            events.append("start")

        def on_after_backward(self, trainer: Trainer) -> None:
            grads = [p.grad for p in trainer.model.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            events.append("backward")

        def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
            assert loss.dim() == 0 and not loss.requires_grad
            events.append("step")

        def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            assert metrics is trainer.history[-1]
            events.append("epoch")

        def on_train_end(self, trainer: Trainer) -> None:
            events.append("end")

    train, _ = mod["data"]()
    trainer = Trainer(
        mod["make_model"](), train, epochs=2, batch_size=64, quiet=True, callbacks=[Record()]
    )
    trainer.fit()
    assert trainer.steps_per_epoch == 3 and trainer.step == 6
    assert events == ["start"] + (["backward", "step"] * 3 + ["epoch"]) * 2 + ["end"]


# ------------------------------------------------------------------------ resume and atomicity


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(
    tmp_path: Path, script: Path, mod: dict[str, Any]
) -> None:
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, str(script), "kill", str(killed)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (killed / "model.safetensors").exists()
    found = read_checkpoint(killed)
    assert found is not None and found.epoch == 2

    with one_thread():
        full = mod["run"](tmp_path / "full")
        resumed = mod["run"](killed, resume=True)
    assert _same(
        _weights(tmp_path / "full" / "model.safetensors"), _weights(killed / "model.safetensors")
    )

    def untimed(hist: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if k != "time"} for r in hist]

    assert untimed(resumed.history) == untimed(full.history)
    with open(killed / "metrics.csv") as f:
        assert len(f.readlines()) == 5


def test_resume_after_exception_is_bit_identical(tmp_path: Path, mod: dict[str, Any]) -> None:
    class Crash(Callback):
        def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            if trainer.epoch == 1:
                raise KeyboardInterrupt

    train, test = mod["data"]()
    cfg = TrainConfig(epochs=3, batch_size=16, quiet=True, out_dir=tmp_path / "crash")
    with one_thread():
        with pytest.raises(KeyboardInterrupt):
            Trainer(mod["make_model"](), train, test, cfg, callbacks=[Crash()]).fit()
        mod["run"](tmp_path / "crash", resume=True, epochs=3)
        mod["run"](tmp_path / "full", epochs=3)
    assert _same(
        _weights(tmp_path / "crash" / "model.safetensors"),
        _weights(tmp_path / "full" / "model.safetensors"),
    )


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, mod: dict[str, Any]) -> None:
    trainer = mod["run"](tmp_path / "new", resume=True, epochs=1)
    assert trainer.epoch == 1 and (tmp_path / "new" / "checkpoint.json").is_file()


def test_fresh_run_refuses_an_earlier_run_and_overwrite_replaces_only_its_files(
    tmp_path: Path, mod: dict[str, Any]
) -> None:
    mod["run"](tmp_path, epochs=1)
    before = _snapshot(tmp_path)
    train, _ = mod["data"]()
    with pytest.raises(ValueError, match="holds an earlier 'train' run; continue it with --resume"):
        Trainer(mod["make_model"](), train, out_dir=tmp_path, epochs=1, quiet=True).fit()
    assert _snapshot(tmp_path) == before  # nothing touched
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints" / "keep.txt").write_text("mine too")
    with pytest.raises(ValueError, match="did not write"):
        Trainer(mod["make_model"](), train, out_dir=tmp_path, epochs=1, quiet=True).fit()
    with one_thread():
        Trainer(
            mod["make_model"](), train, out_dir=tmp_path, epochs=2, quiet=True, overwrite=True
        ).fit()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "checkpoints" / "keep.txt").read_text() == "mine too"
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 2


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _run_folder(path: Path) -> RunFolder:
    return open_run(path, "train", resume=True)


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_interrupted_checkpoint_leaves_previous_one_valid(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    with _run_folder(tmp_path) as run:
        write_checkpoint(run, 1, model, {"step": 4, "buf": torch.arange(3)})
        with pytest.raises(TypeError, match="cannot store object"):
            write_checkpoint(run, 2, model, {"step": 8, "bad": object()})
    found = read_checkpoint(tmp_path)
    assert found is not None
    assert found.epoch == 1 and found.state["step"] == 4 and not found.skipped
    assert torch.equal(found.state["buf"], torch.arange(3))
    assert torch.equal(found.weights["weight"], model.weight.detach())
    with _run_folder(tmp_path) as run:
        write_checkpoint(run, 3, model, {"step": 12})
        write_checkpoint(run, 4, model, {"step": 16})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch0003-model.safetensors",
        "epoch0003-state.safetensors",
        "epoch0003.json",
        "epoch0004-model.safetensors",
        "epoch0004-state.safetensors",
        "epoch0004.json",
    ]


@pytest.mark.parametrize(
    "damage",
    ["truncate-model", "flip-state", "empty-json", "json-dir", "pipe-json", "drop-model"],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, damage: str) -> None:
    model = nn.Linear(3, 2)
    with _run_folder(tmp_path) as run:
        write_checkpoint(run, 1, model, {"step": 4})
        with torch.no_grad():
            model.weight.add_(1.0)
        write_checkpoint(run, 2, model, {"step": 8})
    ck = tmp_path / "checkpoints"
    if damage == "truncate-model":
        data = (ck / "epoch0002-model.safetensors").read_bytes()
        (ck / "epoch0002-model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip-state":
        data = bytearray((ck / "epoch0002-state.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (ck / "epoch0002-state.safetensors").write_bytes(bytes(data))
    elif damage == "empty-json":
        (ck / "epoch0002.json").write_bytes(b"")
    elif damage == "json-dir":
        (ck / "epoch0002.json").unlink()
        (ck / "epoch0002.json").mkdir()
    elif damage == "pipe-json":
        (ck / "epoch0002.json").unlink()
        os.mkfifo(ck / "epoch0002.json")  # must be refused, never read (it would block)
    else:
        (ck / "epoch0002-model.safetensors").unlink()
    found = read_checkpoint(tmp_path)
    assert found is not None and found.epoch == 1 and found.state["step"] == 4
    assert len(found.skipped) == 1 and "epoch 2" in found.skipped[0]
    assert "epoch0002" in found.skipped[0]


def test_no_checkpoint_verifies_raises_checkpoint_error(tmp_path: Path) -> None:
    with _run_folder(tmp_path) as run:
        write_checkpoint(run, 1, nn.Linear(3, 2), {"step": 4})
    (tmp_path / "checkpoints" / "epoch0001-model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"no checkpoint verifies \(epoch 1: .*checksum"):
        read_checkpoint(tmp_path)


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    seed_everything(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    with _run_folder(tmp_path) as run:
        write_checkpoint(run, 1, model, {"optimizer": opt.state_dict()})
    found = read_checkpoint(tmp_path)
    assert found is not None
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    opt2.load_state_dict(found.state["optimizer"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 0.01
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k])


# ----------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path: Path, script: Path, mod: dict[str, Any]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            "ddp",
            str(tmp_path),
        ],
        env={**_env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # gradients are averaged and BatchNorm statistics shared: both ranks hold the same model
    assert _same(
        _weights(tmp_path / "bn-rank0.safetensors"), _weights(tmp_path / "bn-rank1.safetensors")
    )
    ddp = _weights(tmp_path / "nobn-rank0.safetensors")
    assert _same(ddp, _weights(tmp_path / "nobn-rank1.safetensors"))
    assert _same(ddp, _weights(tmp_path / "nobn" / "model.safetensors"))  # rank 0 wrote files

    # two ranks with batch 8 see, step by step, the same 16 items as one process with batch 16
    train, test = mod["data"]()
    with one_thread():
        single = Trainer(
            mod["make_model"](bn=False), train, test, epochs=2, batch_size=16, quiet=True
        )
        single.fit()
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-5)
    rows = json.loads((tmp_path / "nobn" / "metrics.json").read_text())["epochs"]
    assert rows[-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"], rel=1e-4)
    assert rows[-1]["test_error"] == pytest.approx(single.history[-1]["test_error"])


# ----------------------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_cuda_amp_channels_last_compile(amp: str, tmp_path: Path) -> None:
    train, test = synthetic(256, shape=(3, 8, 8), num_classes=4, seed=0)
    seed_everything(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    trainer = Trainer(
        model,
        train,
        test,
        epochs=3,
        batch_size=32,
        amp=amp,
        channels_last=True,
        compile=amp == "bf16",
        out_dir=tmp_path,
        quiet=True,
    )
    hist = trainer.fit()
    assert (trainer.scaler is not None) == (amp == "fp16")
    assert hist[-1]["train_error"] < hist[0]["train_error"]
    assert next(trainer.model.parameters()).is_cuda
    trainer2 = Trainer(
        model,
        train,
        test,
        epochs=4,
        batch_size=32,
        amp=amp,
        out_dir=tmp_path,
        resume=True,
        quiet=True,
    )
    assert len(trainer2.fit()) == 4
