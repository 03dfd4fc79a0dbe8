"""skipkit.train: run-folder rules, resume validation, non-finite losses, model/data checks."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from skipkit import CheckpointError
from skipkit._runs import LOCK_NAME, MANIFEST_NAME, open_run
from skipkit.data import synthetic
from skipkit.train import NonFiniteLossError, TrainConfig, Trainer, seed_everything


def _model(width: int = 4, classes: int = 4) -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, width), nn.ReLU(), nn.Linear(width, classes))


def _data() -> tuple[TensorDataset, TensorDataset]:
    return synthetic(64, shape=(1, 12), num_classes=4, n_test=16, seed=1)


def _fit(out: Path, **kw: Any) -> Trainer:
    train, test = _data()
    model = kw.pop("model", None) or _model()
    cfg = TrainConfig(epochs=kw.pop("epochs", 2), batch_size=16, out_dir=out, quiet=True, **kw)
    trainer = Trainer(model, train, test, cfg)
    trainer.fit()
    return trainer


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# --------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"lr": 0.05}, "lr 0.1 -> 0.05"),
        ({"batch_size": 8}, "batch_size 16 -> 8"),
        ({"seed": 3}, "seed 0 -> 3"),
        ({"schedule": "cosine"}, 'schedule "onecycle" -> "cosine"'),
        ({"weight_decay": 0.0}, "weight_decay 0.0001 -> 0.0"),
        ({"momentum": 0.5}, "momentum 0.9 -> 0.5"),
        ({"optimizer": "adamw"}, 'optimizer "sgd" -> "adamw"'),
        ({"model": "wider"}, "model.parameters 72 -> 106"),
        ({"data": "other"}, "data.train.sha256"),
        ({"epochs": 1}, "beyond epochs=1"),
    ],
)
def test_resume_refuses_a_different_run_listing_each_key(
    tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    _fit(tmp_path, epochs=2)
    before = _snapshot(tmp_path)
    train, test = _data()
    model = _model()
    kw = dict(change)
    if kw.pop("model", None):
        model = _model(width=6)
    if kw.pop("data", None):
        train = synthetic(64, shape=(1, 12), num_classes=4, n_test=16, seed=2)[0]
    settings: dict[str, Any] = {"epochs": 3, "batch_size": 16, **kw}
    cfg = TrainConfig(out_dir=tmp_path, quiet=True, resume=True, **settings)
    with pytest.raises(CheckpointError, match="cannot resume") as info:
        Trainer(model, train, test, cfg).fit()
    message = str(info.value)
    assert needle in message, message
    assert str(tmp_path / "checkpoints" / "epoch0002.json") in message
    assert _snapshot(tmp_path) == before and not (tmp_path / LOCK_NAME).exists()


def test_extending_epochs_is_allowed_and_recorded(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1)
    trainer = _fit(tmp_path, epochs=3, resume=True)
    assert [int(r["epoch"]) for r in trainer.history] == [1, 2, 3]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["config"]["epochs"] == 3 and doc["config"]["momentum"] == 0.9


def test_identity_differences_are_listed(tmp_path: Path) -> None:
    train, test = _data()
    cfg = TrainConfig(epochs=1, batch_size=16, out_dir=tmp_path, quiet=True)
    Trainer(_model(), train, test, cfg, identity={"model_options": {"skip": True}}).fit()
    cfg = TrainConfig(epochs=2, batch_size=16, out_dir=tmp_path, quiet=True, resume=True)
    with pytest.raises(CheckpointError, match=r"model_options\.skip true -> false"):
        Trainer(_model(), train, test, cfg, identity={"model_options": {"skip": False}}).fit()


# ------------------------------------------------------------------------------ run folders


def test_a_live_run_locks_its_folder(tmp_path: Path) -> None:
    with open_run(tmp_path, "train"):
        with pytest.raises(ValueError, match=r"in use by a live skipkit run \(pid \d+\)"):
            _fit(tmp_path, epochs=1)
    _fit(tmp_path, epochs=1, overwrite=True)  # released: an empty claimed folder is fine
    assert not (tmp_path / LOCK_NAME).exists() and (tmp_path / MANIFEST_NAME).is_file()


def test_foreign_file_with_a_name_the_run_writes_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("my own numbers\n")
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError, match=r"already has metrics.csv.*skipkit did not write"):
            _fit(tmp_path, epochs=1, **kw)
    assert (tmp_path / "metrics.csv").read_text() == "my own numbers\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_checkpoint_json_that_is_a_folder_is_refused_before_training(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1)
    (tmp_path / "checkpoint.json").unlink()
    (tmp_path / "checkpoint.json").mkdir()
    with pytest.raises(ValueError, match=r"checkpoint\.json.*not a regular file"):
        _fit(tmp_path, epochs=2, resume=True)


def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1)
    leftovers = [
        tmp_path / ".metrics.csv.abc123.tmp",
        tmp_path / "checkpoints" / ".epoch0001-model.safetensors.x1.tmp",
        tmp_path / f".{MANIFEST_NAME}.zz.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    (tmp_path / ".user.tmp").write_bytes(b"not ours")
    with pytest.raises(ValueError, match=r"did not write \(.user.tmp\)"):
        _fit(tmp_path, epochs=2, resume=True)
    (tmp_path / ".user.tmp").unlink()
    _fit(tmp_path, epochs=2, resume=True)
    assert not [p for p in leftovers if p.exists()]


# --------------------------------------------------------------------------------- numerics


class _Explode(nn.Module):
    """Logits that become NaN from the ``at``-th forward pass in training mode on."""

    def __init__(self, at: int, *, once: bool = False) -> None:
        super().__init__()
        self.net = _model()
        self.calls, self.at, self.once = 0, at, once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at or (not self.once and self.calls > self.at):
                return y * math.nan
        return y


def test_nan_loss_stops_at_that_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as info:
        _fit(tmp_path, epochs=3, model=_Explode(at=6))  # 4 steps per epoch: epoch 2, batch 2
    err = info.value
    assert (err.epoch, err.step, err.checkpoint_epoch) == (2, 5, 1)
    assert err.last_finite is not None and math.isfinite(err.last_finite)
    text = str(err)
    assert "non-finite loss (nan) at batch 2 in epoch 2, step 5" in text
    assert f"the last good checkpoint (epoch 1) is kept in {tmp_path}" in text
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 1
    assert not (tmp_path / "model.safetensors").exists()


def test_on_nan_skip_skips_the_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _Explode(at=3, once=True)
    trainer = _fit(tmp_path, epochs=2, model=model, on_nan="skip")
    assert trainer.step == 8 and all(math.isfinite(r["train_loss"]) for r in trainer.history)
    assert "non-finite loss (nan) at batch 3; skipping the batch" in caplog.text


def test_non_finite_values_are_written_as_nan_never_as_empty_cells(tmp_path: Path) -> None:
    class NanEval(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return y if self.training else y * math.nan

    _fit(tmp_path, epochs=1, model=NanEval())
    with open(tmp_path / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["test_loss"] == "nan"
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"][0]["test_loss"] == "nan"
    train, _ = _data()
    out = tmp_path / "no-test"
    Trainer(_model(), train, None, epochs=1, batch_size=16, out_dir=out, quiet=True).fit()
    with open(out / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["test_loss"] == "" and row["train_loss"] not in ("", "nan")


# -------------------------------------------------------------------------- model vs data


def test_too_few_classes_are_refused_before_training(tmp_path: Path) -> None:
    train, _ = _data()
    with pytest.raises(ValueError, match=r"has 3 outputs, .*labels up to 3: .*num_classes >= 4"):
        Trainer(_model(classes=3), train, out_dir=tmp_path / "r")
    with pytest.raises(ValueError, match=r"cannot take the training data: inputs of shape"):
        Trainer(nn.Linear(5, 4), train)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- load_weights


def test_one_safe_load_weights(tmp_path: Path) -> None:
    import skipkit.models
    import skipkit.train
    from skipkit._weights import read_state_dict

    assert skipkit.train.load_weights is skipkit.models.load_weights
    model = _model()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = _model(width=4)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    skipkit.train.load_weights(fresh, tmp_path / "w.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    )
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match=r"pipe\.pt: is not a regular file"):
        skipkit.train.load_weights(fresh, tmp_path / "pipe.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "w.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.pt: is not a readable torch checkpoint"):
        read_state_dict(tmp_path / "cut.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"dir\.pt: is a folder"):
        read_state_dict(tmp_path / "dir.pt")


def test_safetensors_whose_header_length_starts_with_0x80_is_not_read_as_a_pickle(
    tmp_path: Path,
) -> None:
    import safetensors.torch

    from skipkit._weights import read_state_dict

    # find a state_dict whose safetensors header length has 0x80 as its first byte
    for n in range(1, 400):
        state = {"w" * n: torch.zeros(1)}
        data = safetensors.torch.save(state)
        if data[0] == 0x80:
            break
    else:
        pytest.fail("no header length starting with 0x80 found")
    for name in ("w.safetensors", "w.bin"):
        (tmp_path / name).write_bytes(data)
        got = read_state_dict(tmp_path / name)
        assert list(got) == list(state) and torch.equal(got["w" * n], state["w" * n])
