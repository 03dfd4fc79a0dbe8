"""The evidence for transformers: no skip, post-norm, pre-norm, hyper-connections and mHC on
an embedded, deterministic sequence task, at several depths, as an HTML report.

The task is **associative recall**: ``pairs`` key-value pairs, each one token (``key·values
+ value``), followed by a query token naming one of the keys; the model must name that key's
value (``values`` classes, chance ``1/values``). It is generated from a seed, needs no
download, and is solved only by attending from the last position back to the pair whose key
matches the query, so the answer has to cross every layer::

    (k3,v7) (k0,v2) (k5,v1) (k9,v4)  k0   ->  v2

One token per pair (not ``k v`` as two tokens) keeps the task one attention step deep: a
shallow pre-norm transformer learns it in a few hundred steps, so what a deeper stack fails
to learn is an optimisation failure, not a missing circuit (the two-token form needs an
induction circuit whose plateau outlasts a CPU budget).

Every variant is ``transformer_classifier(..., causal=True, pool="last")`` with the same
sizes and, per depth, the same initial weights for the weights they share (one seed):

    plain  residual="add", skip=False      the same blocks with every skip off
    post   residual="add", norm_at="post"  Vaswani et al.
    pre    residual="add", norm_at="pre"   GPT-2
    hyper  residual="hyper", 4 streams     Zhu et al.
    mhc    residual="mhc", 4 streams       Xie et al.

trained with AdamW at a constant learning rate and **no warm-up** (post-norm's known
weakness, Xiong et al. 2020). ``skipkit transformers`` runs it; ``--quick`` in under a minute.
The report is built by :mod:`skipkit.experiments._transformer_report`.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from skipkit._cli_runs import claim_out, out_folder
from skipkit._cliargs import echo, say
from skipkit._io import atomic_write_text
from skipkit._lazy import load
from skipkit._runs import open_run
from skipkit.diagnostics import gradient_flow
from skipkit.experiments._transformer_findings import findings, trained
from skipkit.experiments.report import Report, environment, html_table
from skipkit.models import create
from skipkit.streams import HyperConnection, composite_gain

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"residual": "add", "skip": False},
    "post": {"residual": "add", "norm_at": "post"},
    "pre": {"residual": "add", "norm_at": "pre"},
    "hyper": {"residual": "hyper"},
    "mhc": {"residual": "mhc"},
}

ON_NAN = ("stop", "skip")
"""A non-finite training loss stops that model (its curves end at that step; the other
models go on) or skips the batch."""


@dataclass
class Settings:
    """What a run depends on. The defaults take about 7 minutes of CPU time on one core
    (the multi-stream variants most of it: see ``docs/guide_transformers.md``)."""

    depths: tuple[int, ...] = (2, 6)
    variants: tuple[str, ...] = tuple(VARIANTS)
    pairs: int = 6
    keys: int = 16
    values: int = 16
    width: int = 64
    heads: int = 4
    steps: int = 1000
    batch: int = 32
    lr: float = 1e-3
    eval_every: int = 50
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0
    on_nan: str = "stop"


QUICK = Settings(
    depths=(1, 3), pairs=3, keys=8, values=8, width=32, steps=100, eval_every=25,
    train_size=2_000, test_size=256, lr=3e-3,
)  # fmt: skip


@dataclass
class VariantRun:
    """One trained model: its curves (``steps``, ``loss`` mean train loss since the previous
    point, ``accuracy`` test), final numbers, the gradient norm ``‖∂L/∂W‖`` reaching each
    weight layer at init (``grad_layers`` their paths, input side first), for multi-stream
    variants the composite mixing gain across depth after training (``gains[k-1]``: the
    first ``k`` sublayers), the batches with a non-finite loss (``nonfinite``; with
    ``on_nan="stop"`` training ended at ``stopped_at``) and its cost (``seconds`` training
    wall time, ``cpu_seconds`` this process's CPU time for it)."""

    variant: str
    depth: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    final_accuracy: float = math.nan
    final_loss: float = math.nan
    grad_layers: list[str] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    nonfinite: int = 0
    stopped_at: int | None = None
    seconds: float = 0.0
    flow_seconds: float = 0.0
    eval_seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.depth}"

    def block_grads(self) -> tuple[list[str], list[float]]:
        """The gradient norms of the blocks' linear layers (``qkv``, ``proj``, ``fc``), input
        side first: the layers every variant has, in the same order (the multi-stream
        variants' own mixing weights and the embeddings left out)."""
        pairs = [
            (p, g)
            for p, g in zip(self.grad_layers, self.grad_norms, strict=True)
            if p.startswith("blocks.") and p.rsplit(".", 1)[-1] in ("qkv", "proj", "fc")
        ]
        return [p for p, _ in pairs], [g for _, g in pairs]


def recall_data(n: int, s: Settings, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` associative-recall sequences ``(n, pairs + 1)`` and their labels ``(n,)`` in
    ``0..values-1``: ``pairs`` pair tokens ``key·values + value`` (distinct keys), then the
    query token ``keys·values + key``. The vocabulary is ``keys·values + keys``."""
    if s.pairs > s.keys:
        raise ValueError(f"pairs={s.pairs} needs at least as many keys, got keys={s.keys}")
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(n, s.keys, generator=g).argsort(dim=1)[:, : s.pairs]  # distinct keys
    vals = torch.randint(0, s.values, (n, s.pairs), generator=g)
    which = torch.randint(0, s.pairs, (n,), generator=g)
    query = keys.gather(1, which[:, None]) + s.keys * s.values
    return torch.cat([keys * s.values + vals, query], dim=1), vals.gather(1, which[:, None])[:, 0]


def build(variant: str, depth: int, s: Settings) -> nn.Module:
    """The variant's model, seeded so all variants of one depth share their initial weights."""
    torch.manual_seed(s.seed * 1000 + depth)
    return create(
        "transformer_classifier",
        vocab_size=s.keys * s.values + s.keys,
        context=s.pairs + 1,
        num_classes=s.values,
        depth=depth,
        width=s.width,
        heads=s.heads,
        pool="last",
        causal=True,
        **VARIANTS[variant],
    )


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def _strict(v: Any) -> Any:
    """``v`` with NaN and infinities as ``None`` (a model stopped or skipping batches has
    some): strict JSON, which any tool reads."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_strict(x) for x in v]
    return v


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def train_variant(
    variant: str,
    depth: int,
    s: Settings,
    data: tuple[torch.Tensor, ...],
    *,
    tick: Any = None,
) -> VariantRun:
    """Train one model; a curve point every ``eval_every`` steps. ``tick(n)`` (a progress
    bar's ``update``) is called with the steps done since the last call."""
    x_train, y_train, x_test, y_test = data
    model = build(variant, depth, s)
    run = VariantRun(variant, depth)
    wall, cpu = time.perf_counter(), time.process_time()
    flow = gradient_flow(model, (x_test[: s.batch], y_test[: s.batch]), nn.CrossEntropyLoss())
    run.grad_layers = [layer.path for layer in flow.layers]
    run.grad_norms = flow.column("weight_grad_norm")
    run.flow_seconds = time.perf_counter() - wall
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(s.seed)
    running: list[float] = []
    done = 0
    for step in range(1, s.steps + 1):
        i = torch.randint(0, x_train.shape[0], (s.batch,), generator=g)
        loss = F.cross_entropy(model(x_train[i]), y_train[i])
        value = loss.item()
        if math.isfinite(value):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(value)
        else:
            run.nonfinite += 1
            if s.on_nan == "stop":
                run.stopped_at = step
                log.warning("%s-%d: non-finite loss at step %d; training stopped", variant,
                            depth, step)  # fmt: skip
        last = step == s.steps or run.stopped_at is not None
        if step % s.eval_every == 0 or last:
            run.steps.append(step)
            run.loss.append(_mean(running))
            t_eval = time.perf_counter()
            run.accuracy.append(_accuracy(model, x_test, y_test))
            run.eval_seconds += time.perf_counter() - t_eval
            running = []
            if tick is not None:
                tick(step - done)
                done = step
        if run.stopped_at is not None:
            break
    if tick is not None:
        tick(s.steps - done)  # a stopped model's remaining steps count as done
    if run.nonfinite and s.on_nan == "skip":
        log.warning("%s-%d: skipped %d batches with a non-finite loss", variant, depth,
                    run.nonfinite)  # fmt: skip
    run.final_accuracy = run.accuracy[-1]
    run.final_loss = next((v for v in reversed(run.loss) if math.isfinite(v)), math.nan)
    hcs = [m for m in model.modules() if isinstance(m, HyperConnection)]
    run.gains = composite_gain(hcs) if hcs else []
    run.seconds, run.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return run


def run_experiment(s: Settings, *, progress: bool = False) -> list[VariantRun]:
    """Every variant at every depth, on one train / test split, in one thread.

    ``progress``: a bar over all steps of all models (for a terminal); otherwise one log
    line per model."""
    for v in s.variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    if not s.depths or min(s.depths) < 1:
        raise ValueError(f"depths={s.depths} must be one or more positive integers")
    if s.on_nan not in ON_NAN:
        raise ValueError(f"on_nan={s.on_nan!r}; choose one of {ON_NAN}")
    # the test split's seed is negative: never one of the training splits' (--seed >= 0)
    test = recall_data(s.test_size, s, seed=-1 - s.seed)
    data = (*recall_data(s.train_size, s, seed=s.seed), *test)
    jobs = [(v, d) for d in s.depths for v in s.variants]
    bar = None
    if progress:
        bar = tqdm(total=len(jobs) * s.steps, unit="step", desc="training", leave=False)
    # one thread: at these sizes a second thread costs more (synchronisation, and spinning
    # on a shared machine) than it gives
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs: list[VariantRun] = []
    try:
        for v, d in jobs:
            run = train_variant(v, d, s, data, tick=None if bar is None else bar.update)
            runs.append(run)
            msg = (
                f"[{len(runs)}/{len(jobs)}] {run.name:<8} test accuracy "
                f"{run.final_accuracy:6.1%}  ({run.seconds:.0f} s, {run.cpu_seconds:.0f} s CPU)"
            )
            if bar is not None:
                bar.write(msg)
            else:
                log.info(msg)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    return runs


def write_report(
    runs: list[VariantRun], s: Settings, out: Path, *, timing: dict[str, float] | None = None
) -> Path:
    """``out/report.html`` and ``out/results.json``: the settings, the environment, the
    timing (``timing`` plus ``report``, the seconds this took), the findings, every run and,
    under ``"sections"``, the numbers of every table and figure of the report (the figures
    are drawn from them). Returns the path of ``report.html``."""
    figs = load("skipkit.experiments._transformer_figures")  # matplotlib: see skipkit._lazy

    t0 = time.perf_counter()
    depths = sorted({r.depth for r in runs})
    report = Report(
        "Skips in transformers: associative recall",
        subtitle=f"{len(runs)} models, depths {', '.join(map(str, depths))}, {s.steps} steps each",
    )
    words = findings(runs, s)
    items = "".join(f"<li>{html.escape(w)}</li>" for w in words)
    report.add_section("What this run shows", f"<ul>{items}</ul>", data={"findings": words})
    columns = ["variant", "depth", "train loss", "test accuracy", "max mixing gain",
               "non-finite batches", "seconds", "CPU seconds"]  # fmt: skip
    values = [
        [r.variant, r.depth, r.final_loss, r.final_accuracy, max(r.gains) if r.gains else None,
         r.nonfinite, r.seconds, r.cpu_seconds]
        for r in runs
    ]  # fmt: skip
    shown = [
        [v, str(d), f"{loss:.3f}", f"{acc:.1%}", "" if g is None else f"{g:.3f}", str(n),
         f"{sec:.0f}", f"{cpu:.0f}"]
        for v, d, loss, acc, g, n, sec, cpu in values
    ]  # fmt: skip
    report.add_section(
        "Results", html_table(columns, shown), data={"columns": columns, "rows": values}
    )
    chance = 1.0 / s.values
    for title, series in figs.figure_data(runs).items():
        fig = figs.plot(title, series, depths, chance)
        report.add_section(title, "", {figs.CAPTIONS[title]: fig}, data=series)
    settings = html.escape(json.dumps(asdict(s)))
    report.add_section("Settings", f"<p><code>{settings}</code></p>", data=asdict(s))
    timing = {**(timing or {}), "report": time.perf_counter() - t0}
    cells = [[k.replace("_", " "), f"{v:.1f}"] for k, v in timing.items()]
    report.add_section(
        "Timing", html_table(["", "seconds"], cells, css_class="narrow"), data=timing
    )
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "settings": asdict(s),
        "environment": environment(),
        "timing": timing,
        "findings": words,
        "runs": [asdict(r) for r in runs],
        "sections": report.data(),
    }
    atomic_write_text(out / "results.json", json.dumps(_strict(doc), indent=1) + "\n")
    return report.write(out / "report.html")


REPORT_FILES = ("report.html", "results.json")
"""What ``skipkit transformers`` writes into its run folder."""


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's :class:`Settings`: the defaults (or :data:`QUICK`) and the options given."""
    base = asdict(QUICK if args.quick else Settings())
    given = {"depths": args.depths, "steps": args.steps, "seed": args.seed}
    base.update({k: v for k, v in given.items() if v is not None})
    base["on_nan"] = args.on_nan
    s = Settings(**base)
    if s.eval_every > s.steps:
        s.eval_every = s.steps
    return s


def run_command(args: argparse.Namespace) -> int:
    """``skipkit transformers`` (parsed by :mod:`skipkit._cli_transformer`): claim the run
    folder (see :func:`skipkit._runs.open_run`), train, write the report."""
    s = settings_from(args)
    out_folder(args)
    out = claim_out(args, "transformers")
    with open_run(out, "transformers", overwrite=args.overwrite, writes=REPORT_FILES) as run:
        run.expect(*REPORT_FILES)
        n = len(s.depths) * len(s.variants)
        say(args, f"training {n} transformers on associative recall -> {out}")
        wall, cpu = time.perf_counter(), time.process_time()
        runs = run_experiment(s, progress=not args.quiet and sys.stderr.isatty())
        timing = {
            "training_wall": time.perf_counter() - wall,
            "training_cpu": time.process_time() - cpu,
        }
        path = write_report(runs, s, out, timing=timing)
        run.record(*REPORT_FILES)
    for line in findings(runs, s):
        echo(line)
    echo(f"report: {path}")
    return 0


__all__ = [
    "ON_NAN",
    "QUICK",
    "REPORT_FILES",
    "VARIANTS",
    "Settings",
    "VariantRun",
    "build",
    "findings",
    "recall_data",
    "run_command",
    "run_experiment",
    "settings_from",
    "train_variant",
    "trained",
    "write_report",
]
