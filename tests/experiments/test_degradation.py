"""skipkit.experiments.degradation: twins, depths, results, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skipkit.experiments import (
    DegradationResult,
    ModelRun,
    build_model,
    check_depth,
    format_table,
    run_degradation,
)


def _run(name: str, depth: int, skip: bool, err: float) -> ModelRun:
    return ModelRun(name, depth, skip, 100, err, err + 0.05, 0.1, [0.9, err], [0.9, err + 0.05])


def _result(p20: float, p56: float, r20: float, r56: float) -> DegradationResult:
    runs = [
        _run("plain-20", 20, False, p20),
        _run("plain-56", 56, False, p56),
        _run("residual-20", 20, True, r20),
        _run("residual-56", 56, True, r56),
    ]
    return DegradationResult("mnist1d", [20, 56], {"epochs": 2}, runs, 12.0)


@pytest.mark.parametrize("depth", [8, 14, 20, 56, 110])
def test_check_depth_accepts_6n_plus_2(depth: int) -> None:
    assert check_depth(depth) == depth


@pytest.mark.parametrize("depth", [2, 7, 21, 57, 0, -4, 20.0, True])
def test_check_depth_rejects_others(depth: int) -> None:
    with pytest.raises(ValueError, match="not 6n\\+2"):
        check_depth(depth)


def test_twins_share_layers_and_initial_weights() -> None:
    torch.manual_seed(0)
    plain = build_model(14, skip=False)
    torch.manual_seed(0)
    residual = build_model(14, skip=True)
    a, b = plain.state_dict(), residual.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 1, 40)  # MNIST-1D shaped
    assert plain(x).shape == residual(x).shape == (2, 10)
    assert not torch.allclose(plain.eval()(x), residual.eval()(x))
    # registered depths go through the registry, others through the generic builder
    assert build_model(20, skip=True).depth == 20  # type: ignore[attr-defined]


def test_verdict() -> None:
    shown = _result(p20=0.01, p56=0.30, r20=0.01, r56=0.0)
    assert shown.verdict() == {"plain_degrades": True, "residual_holds": True}
    flat = _result(p20=0.01, p56=0.02, r20=0.01, r56=0.2)
    assert flat.verdict() == {"plain_degrades": False, "residual_holds": False}
    assert shown.get(56, True).name == "residual-56"
    with pytest.raises(KeyError):
        shown.get(32, True)


def test_result_round_trips_through_json(tmp_path: Path) -> None:
    res = _result(0.01, 0.3, 0.01, 0.0)
    path = res.save(tmp_path / "results.json")
    doc = json.loads(path.read_text())
    assert doc["verdict"]["plain_degrades"] is True
    assert DegradationResult.load(path) == res
    table = format_table(res)
    assert "plain-56" in table and "30.00%" in table


def test_run_degradation_in_process(tmp_path: Path) -> None:
    res = run_degradation(
        (8,), dataset="synthetic", epochs=2, batch_size=64, workers=1, out_dir=tmp_path
    )
    assert [r.name for r in res.runs] == ["plain-8", "residual-8"]
    for r in res.runs:
        assert len(r.train_curve) == len(r.test_curve) == 2
        assert 0.0 <= r.train_error <= 1.0 and r.params > 0
        assert (tmp_path / "runs" / r.name / "model.safetensors").is_file()
    assert res.config["epochs"] == 2 and res.config["lr"] == 0.1
    assert DegradationResult.load(tmp_path / "results.json").runs[0].name == "plain-8"

    # resuming finished runs retrains nothing and gives the same numbers
    again = run_degradation(
        (8,),
        dataset="synthetic",
        epochs=2,
        batch_size=64,
        workers=1,
        out_dir=tmp_path,
        resume=True,
    )
    assert [r.train_curve for r in again.runs] == [r.train_curve for r in res.runs]


def test_run_degradation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        run_degradation((20, 57), epochs=1)
    with pytest.raises(ValueError, match="unknown dataset"):
        run_degradation((8,), dataset="mnist2d", epochs=1)
    with pytest.raises(ValueError, match="workers"):
        run_degradation((8,), dataset="synthetic", epochs=1, workers=0)
