"""skipkit.experiments.transformer: the task, the findings, the non-finite policy, and the
``--quick`` command end to end (run once for the module): its results.json, its report, its
refusals."""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import math
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from skipkit.cli import main
from skipkit.experiments import _transformer_figures as figs
from skipkit.experiments.transformer import (
    QUICK,
    Settings,
    VariantRun,
    findings,
    recall_data,
    train_variant,
)


def test_recall_data_is_deterministic_and_answerable() -> None:
    s = Settings(pairs=4, keys=10, values=5)
    x, y = recall_data(200, s, seed=3)
    x2, y2 = recall_data(200, s, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (200, 5) and int(y.max()) < 5
    assert int(x[:, :4].max()) < 50 and bool((x[:, 4] >= 50).all())  # pairs, then the query
    keys, vals, query = x[:, :4] // 5, x[:, :4] % 5, x[:, 4] - 50
    assert all(len(set(k.tolist())) == 4 for k in keys)  # distinct keys per sequence
    answer = vals[torch.arange(200), (keys == query[:, None]).int().argmax(1)]
    assert torch.equal(answer, y)
    with pytest.raises(ValueError, match="pairs=11"):
        recall_data(1, Settings(pairs=11, keys=10), seed=0)


def test_findings_are_derived_from_the_numbers() -> None:
    s = Settings(depths=(2, 4), variants=("plain", "post", "pre", "hyper", "mhc"), values=10)
    accs = {"plain": (0.9, 0.1), "post": (0.95, 0.5), "pre": (0.9, 0.92), "hyper": (0.9, 0.3)}
    runs = [
        VariantRun(v, d, final_accuracy=a[i]) for i, d in enumerate((2, 4)) for v, a in accs.items()
    ]
    runs[-1].gains = [1.0, 1.5, 2.25]  # hyper at depth 4
    runs.append(VariantRun("mhc", 4, final_accuracy=0.95, gains=[1.0, 1.0005], stopped_at=7))
    runs[-1].steps, runs[-1].accuracy = [10, 20, 30, 40], [0.1, 0.2, 0.5, 0.95]
    deeper = "\n".join(findings([*runs, *(VariantRun(v, 8, final_accuracy=0.12) for v in accs)], s))
    assert "At depth 8 the best variants are plain, post, pre and hyper (12.0%)." in deeper
    assert "From depth 2 to depth 8: plain loses (90.0% -> 12.0%)" in deeper
    assert "pre loses (90.0% -> 12.0%)" in deeper
    text = "\n".join(findings(runs, s))
    assert "Chance is 10.0%" in text and "(55.0%)" in text  # the bar for "trained"
    assert (
        "Depth 4: test accuracy plain 10.0%, post 50.0%, pre 92.0%, hyper 30.0%, mhc 95.0%" in text
    )
    assert "plain loses (90.0% -> 10.0%), post loses (95.0% -> 50.0%), pre holds" in text
    assert (
        "Still improving when training stopped" in text
        and "mhc-4 (+45% in its last 10 steps)" in text
    )
    assert "At depth 4 the best variant is mhc (95.0%)." in text
    assert "plain does not train at depth 4 (as expected: yes)" in text
    assert "post-norm degrades at depth 4" in text and "hyper does not train" in text
    assert "hyper: the composite residual-mapping gain over the 3 sublayers" in text
    assert "grows to 2.250" in text and "differs from 1 by at most 5.0e-04" in text
    assert "mhc-4 stopped at step 7: non-finite loss; its curves end there." in text
    chance = "\n".join(findings([VariantRun("plain", d, final_accuracy=0.12) for d in (1, 2)], s))
    assert "plain holds (12.0% -> 12.0%, at chance)" in chance


TINY = replace(QUICK, pairs=2, keys=4, values=4, width=16, steps=6, eval_every=3, batch=8)


def _data(s: Settings) -> tuple[torch.Tensor, ...]:
    return (*recall_data(64, s, seed=0), *recall_data(32, s, seed=-1))


def test_training_is_deterministic() -> None:
    a, b = (asdict(train_variant("mhc", 1, TINY, _data(TINY))) for _ in range(2))
    for run in (a, b):
        for cost in ("seconds", "flow_seconds", "eval_seconds", "cpu_seconds"):
            assert run.pop(cost) >= 0
    assert a == b and len(a["gains"]) == 2 and a["steps"] == [3, 6]


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_loss_stops_or_skips_per_policy(policy: str) -> None:
    s = replace(TINY, lr=math.inf, on_nan=policy)  # step 1 makes every weight non-finite
    run = train_variant("pre", 1, s, _data(s))
    if policy == "stop":
        assert (run.stopped_at, run.nonfinite, run.steps) == (2, 1, [2])
    else:
        assert (run.stopped_at, run.nonfinite, run.steps) == (None, 5, [3, 6])
        assert math.isnan(run.loss[-1])  # no finite batch since the previous point
    assert math.isfinite(run.final_loss) and run.final_loss == run.loss[0]  # the last finite


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``skipkit transformers --quick`` run: its folder, results, report and output."""
    out = tmp_path_factory.mktemp("transformers") / "run"
    stdout, stderr, lines = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(lines)  # pytest keeps the CLI's basicConfig from acting
    log = logging.getLogger("skipkit.experiments.transformer")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["transformers", "--quick", "--out", str(out)])
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return {
        "code": code,
        "out": out,
        "data": json.loads((out / "results.json").read_text()),
        "html": (out / "report.html").read_text(),
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "log": lines.getvalue(),
    }


def test_quick_writes_every_variant_at_every_depth(quick: dict[str, Any]) -> None:
    assert quick["code"] == 0
    data = quick["data"]
    assert data["settings"] == json.loads(json.dumps(asdict(QUICK)))
    runs = data["runs"]
    assert [(r["variant"], r["depth"]) for r in runs] == [
        (v, d) for d in QUICK.depths for v in QUICK.variants
    ]
    for r in runs:
        assert r["steps"] == [25, 50, 75, 100]
        assert len(r["accuracy"]) == len(r["loss"]) == 4
        assert (
            all(0.0 <= a <= 1.0 for a in r["accuracy"]) and r["final_accuracy"] == r["accuracy"][-1]
        )
        assert all(math.isfinite(v) and v > 0 for v in r["loss"])
        assert len(r["grad_layers"]) == len(r["grad_norms"]) > 4 * r["depth"]
        assert (r["nonfinite"], r["stopped_at"]) == (0, None)
        assert r["cpu_seconds"] > 0 and r["seconds"] > r["flow_seconds"] + r["eval_seconds"] > 0
        multi = r["variant"] in ("hyper", "mhc")
        assert len(r["gains"]) == (2 * r["depth"] if multi else 0)  # one per sublayer
    # the progress lines (not a terminal): one per model
    assert len(re.findall(r"^\[\d+/10\] ", quick["log"], flags=re.M)) == 10
    assert set(data["timing"]) == {"training_wall", "training_cpu", "report"}


def test_mhc_gain_is_one_and_hyper_gain_is_recorded(quick: dict[str, Any]) -> None:
    runs = {(r["variant"], r["depth"]): r for r in quick["data"]["runs"]}
    for d in QUICK.depths:
        # a product of doubly stochastic matrices: every row sum is 1, so the gain is 1
        assert all(abs(g - 1.0) < 1e-3 for g in runs[("mhc", d)]["gains"])
        hyper = runs[("hyper", d)]["gains"]
        assert all(math.isfinite(g) and g > 0 for g in hyper)
    deepest = max(QUICK.depths)
    hyper_max = max(runs[("hyper", deepest)]["gains"])
    words = "\n".join(quick["data"]["findings"])
    assert f"{hyper_max:.3f}" in words or "stays within" in words


def test_findings_are_the_same_in_the_json_the_report_and_the_output(
    quick: dict[str, Any],
) -> None:
    words = quick["data"]["findings"]
    runs = [VariantRun(**r) for r in quick["data"]["runs"]]
    assert words == findings(runs, QUICK)  # regenerated from the recorded numbers
    assert quick["data"]["sections"]["what_this_run_shows"]["findings"] == words
    for line in words:
        assert line in quick["stdout"]
    items = re.findall(r"<li>(.*?)</li>", quick["html"])
    assert len(items) == len(words)
    assert "report: " in quick["stdout"]


FIELDS = {figs.CURVES: ("accuracy", "loss"), figs.FLOW: ("weight_grad_norm",), figs.GAIN: ("gain",)}


def test_every_figure_and_table_of_the_report_is_in_the_json(quick: dict[str, Any]) -> None:
    data, page = quick["data"], quick["html"]
    sections = data["sections"]
    runs = [VariantRun(**r) for r in data["runs"]]
    drawn = figs.figure_data(runs)
    assert page.count("<figure>") == len(drawn) == 3
    for title, series in drawn.items():
        key = "_".join(re.findall(r"[a-z0-9]+", title.lower()))
        assert f"<h2>{title}</h2>" in page and html.escape(figs.CAPTIONS[title]) in page
        assert sections[key] == json.loads(json.dumps(series))
        # every line of the figure is one series of the JSON, point for point
        fig = figs.plot(title, sections[key], list(QUICK.depths), 1 / QUICK.values)
        lines = [ln for ax in fig.axes for ln in ax.get_lines()]
        lines = [ln for ln in lines if not str(ln.get_label()).startswith("_")]  # not chance
        assert len(lines) == len(FIELDS[title]) * len(series)
        ys = [[float(y) for y in ln.get_ydata()] for ln in lines]
        for name, v in series.items():
            for key_ in FIELDS[title]:
                assert [float(y) for y in v[key_]] in ys, (title, name, key_)
    table = sections["results"]
    assert table["columns"][:4] == ["variant", "depth", "train loss", "test accuracy"]
    assert [row[:2] for row in table["rows"]] == [[r.variant, r.depth] for r in runs]
    assert [row[3] for row in table["rows"]] == [r.final_accuracy for r in runs]
    assert page.count("<tr>") >= len(runs) + 1
    assert sections["settings"] == data["settings"] and sections["timing"] == data["timing"]


def test_an_existing_report_is_kept(
    quick: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = (quick["out"] / "results.json").read_bytes()
    assert main(["transformers", "--quick", "--out", str(quick["out"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert (quick["out"] / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--depths", "0"], "argument --depths"),
        (["--depths", "2,x"], "argument --depths"),
        (["--depths", ","], "argument --depths"),
        (["--depths", "97"], "argument --depths"),
        (["--steps", "0"], "argument --steps"),
        (["--seed", "-1"], "argument --seed"),
        (["--on-nan", "ignore"], "argument --on-nan"),
        (["--quick", "--overwrite", "--resume"], "unrecognized arguments: --resume"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(
    tmp_path: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transformers", *args, "--out", str(tmp_path / "x")]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert out == "" and not (tmp_path / "x").exists()
