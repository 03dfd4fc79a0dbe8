"""The evidence for transformers: no skip, post-norm, pre-norm, hyper-connections and mHC on
an embedded, deterministic sequence task, at several depths, as an HTML report.

The task is **associative recall**: a sequence of ``pairs`` key-value token pairs followed by
one of the keys; the model must name that key's value (``values`` classes, chance
``1/values``). It is generated from a seed, needs no download, and is solvable only by
attending from the last position back to the right pair, so information must cross every
layer::

    k3 v7 k0 v2 k5 v1 k9 v4  k0   ->  v2

Every variant is ``transformer_classifier(..., causal=True, pool="last")`` with the same
sizes and, per depth, the same initial weights for the weights they share (one seed):

    plain  residual="add", skip=False      the same blocks with every skip off
    post   residual="add", norm_at="post"  Vaswani et al.
    pre    residual="add", norm_at="pre"   GPT-2
    hyper  residual="hyper", 4 streams     Zhu et al.
    mhc    residual="mhc", 4 streams       Xie et al.

trained with AdamW at a constant learning rate and **no warm-up** (post-norm's known
weakness, Xiong et al. 2020). ``skipkit transformers`` runs it; ``--quick`` in under a minute.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from skipkit._io import atomic_write_text
from skipkit._runs import open_run
from skipkit.experiments.report import Report, html_table
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


@dataclass
class Settings:
    """What a run depends on. The defaults are sized for 5-8 minutes of CPU time on one core,
    estimated from 10-step timings and a partial run (mHC's per-token Sinkhorn is about half
    of it); a complete default run has not been timed yet."""

    depths: tuple[int, ...] = (2, 6)
    variants: tuple[str, ...] = tuple(VARIANTS)
    pairs: int = 6
    keys: int = 16
    values: int = 16
    width: int = 64
    heads: int = 4
    steps: int = 500
    batch: int = 32
    lr: float = 3e-3
    eval_every: int = 50
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0


QUICK = Settings(
    depths=(1, 3), pairs=3, keys=8, values=8, width=32, steps=60, eval_every=20,
    train_size=2_000, test_size=256, batch=32,
)  # fmt: skip


@dataclass
class VariantRun:
    """One trained model: its curves (``steps``, ``loss`` train, ``accuracy`` test), final
    numbers, the gradient norm reaching each layer at init, and for multi-stream variants the
    composite mixing gain across depth after training."""

    variant: str
    depth: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    final_accuracy: float = math.nan
    final_loss: float = math.nan
    grad_norms: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    seconds: float = 0.0


def recall_data(n: int, s: Settings, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` associative-recall sequences ``(n, 2·pairs + 1)`` (keys ``0..keys-1``, values
    ``keys..keys+values-1``) and their labels ``(n,)`` in ``0..values-1``."""
    if s.pairs > s.keys:
        raise ValueError(f"pairs={s.pairs} needs at least as many keys, got keys={s.keys}")
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(n, s.keys, generator=g).argsort(dim=1)[:, : s.pairs]  # distinct keys
    vals = torch.randint(0, s.values, (n, s.pairs), generator=g)
    seq = torch.stack([keys, vals + s.keys], dim=2).flatten(1)  # (n, 2·pairs)
    which = torch.randint(0, s.pairs, (n,), generator=g)
    query = keys.gather(1, which[:, None])
    return torch.cat([seq, query], dim=1), vals.gather(1, which[:, None]).squeeze(1)


def build(variant: str, depth: int, s: Settings) -> nn.Module:
    """The variant's model, seeded so all variants of one depth share their initial weights."""
    torch.manual_seed(s.seed * 1000 + depth)
    return create(
        "transformer_classifier",
        vocab_size=s.keys + s.values,
        context=2 * s.pairs + 1,
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


def train_variant(
    variant: str, depth: int, s: Settings, data: tuple[torch.Tensor, ...]
) -> VariantRun:
    """Train one model; curves every ``eval_every`` steps."""
    from skipkit.diagnostics import gradient_flow

    x_train, y_train, x_test, y_test = data
    model = build(variant, depth, s)
    run = VariantRun(variant, depth)
    flow = gradient_flow(model, (x_test[: s.batch], y_test[: s.batch]), nn.CrossEntropyLoss())
    run.grad_norms = flow.column("weight_grad_norm")
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(s.seed)
    t0, running = time.perf_counter(), []
    for step in range(1, s.steps + 1):
        i = torch.randint(0, x_train.shape[0], (s.batch,), generator=g)
        loss = F.cross_entropy(model(x_train[i]), y_train[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if step % s.eval_every == 0 or step == s.steps:
            run.steps.append(step)
            run.loss.append(sum(running) / len(running))
            run.accuracy.append(_accuracy(model, x_test, y_test))
            running = []
    run.final_accuracy, run.final_loss = run.accuracy[-1], run.loss[-1]
    hcs = [m for m in model.modules() if isinstance(m, HyperConnection)]
    run.gains = composite_gain(hcs) if hcs else []
    run.seconds = time.perf_counter() - t0
    log.info("%s-%d: accuracy %.3f (%.0f s)", variant, depth, run.final_accuracy, run.seconds)
    return run


def run_experiment(s: Settings) -> list[VariantRun]:
    """Every variant at every depth, on one train / test split."""
    for v in s.variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    if not s.depths or min(s.depths) < 1:
        raise ValueError(f"depths={s.depths} must be one or more positive integers")
    data = (*recall_data(s.train_size, s, seed=s.seed), *recall_data(s.test_size, s, seed=-1))
    # one thread: at these sizes a second thread costs more (synchronisation, and spinning
    # on a shared machine) than it gives
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [train_variant(v, d, s, data) for d in s.depths for v in s.variants]
    finally:
        torch.set_num_threads(threads)


def findings(runs: list[VariantRun], s: Settings) -> list[str]:
    """Plain sentences derived from the numbers (no claim the numbers do not carry)."""
    chance = 1.0 / s.values
    deepest = max(s.depths)
    at = {(r.variant, r.depth): r for r in runs}
    out = [f"Chance is {chance:.1%}; {s.steps} steps per model, no warm-up."]
    for d in s.depths:
        row = ", ".join(f"{v} {at[(v, d)].final_accuracy:.1%}" for v in s.variants if (v, d) in at)
        out.append(f"Depth {d}: test accuracy {row}.")
    best = max((r for r in runs if r.depth == deepest), key=lambda r: r.final_accuracy)
    out.append(f"At depth {deepest} the best variant is {best.variant}.")
    for v in s.variants:
        if v != "pre" and (v, deepest) in at and ("pre", deepest) in at:
            diff = at[(v, deepest)].final_accuracy - at[("pre", deepest)].final_accuracy
            if abs(diff) >= 0.05:
                word = "above" if diff > 0 else "below"
                out.append(f"{v} ends {abs(diff):.0%} {word} pre-norm at depth {deepest}.")
    for v in ("hyper", "mhc"):
        if (v, deepest) in at and at[(v, deepest)].gains:
            out.append(
                f"{v}: composite mixing gain after training, largest over depth "
                f"{max(at[(v, deepest)].gains):.3f}"
                + (" (doubly stochastic: 1 by construction)." if v == "mhc" else ".")
            )
    return out


def _figures(runs: list[VariantRun], s: Settings) -> dict[str, Any]:
    from matplotlib.figure import Figure

    colors = {"plain": "#b2182b", "post": "#ef8a62", "pre": "#2166ac", "hyper": "#1b7837",
              "mhc": "#762a83"}  # fmt: skip
    curves = Figure(figsize=(4.2 * len(s.depths), 3.6), layout="constrained")
    axes = curves.subplots(1, len(s.depths), sharey=True, squeeze=False)[0]
    for ax, d in zip(axes, s.depths, strict=True):
        for r in runs:
            if r.depth == d:
                ax.plot(r.steps, r.accuracy, color=colors[r.variant], lw=2, label=r.variant)
        ax.axhline(1 / s.values, color="#999", ls=":", lw=1)
        ax.set_title(f"depth {d}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(frameon=False, fontsize=9)
    flow = Figure(figsize=(7, 3.6), layout="constrained")
    ax = flow.subplots()
    deepest = max(s.depths)
    for r in runs:
        if r.depth == deepest and r.grad_norms:
            ax.semilogy(range(1, len(r.grad_norms) + 1), r.grad_norms, color=colors[r.variant],
                        label=r.variant)  # fmt: skip
    ax.set_xlabel("weight layer (input side first)")
    ax.set_ylabel("‖∂L/∂W‖ at init")
    ax.set_title(f"gradient reaching each layer, depth {deepest}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    figs: dict[str, Any] = {"Test accuracy during training": curves, "Gradient flow": flow}
    multi = [r for r in runs if r.gains and r.depth == deepest]
    if multi:
        gain = Figure(figsize=(7, 3.4), layout="constrained")
        ax = gain.subplots()
        for r in multi:
            ax.plot(range(1, len(r.gains) + 1), r.gains, color=colors[r.variant], marker="o",
                    label=r.variant)  # fmt: skip
        ax.set_xlabel("sublayers composed")
        ax.set_ylabel("composite mixing gain")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=9)
        figs["Composite mixing gain across depth (after training)"] = gain
    return figs


def write_report(runs: list[VariantRun], s: Settings, out: Path) -> Path:
    """``out/report.html`` and ``out/results.json`` (every number the report shows)."""
    report = Report(
        "Skips in transformers: associative recall",
        subtitle=f"{len(runs)} models, depths {', '.join(map(str, s.depths))}",
    )
    words = "".join(f"<li>{html.escape(w)}</li>" for w in findings(runs, s))
    report.add_section("What this run shows", f"<ul>{words}</ul>")
    rows = [
        [r.variant, str(r.depth), f"{r.final_loss:.3f}", f"{r.final_accuracy:.1%}",
         f"{max(r.gains):.3f}" if r.gains else "", f"{r.seconds:.0f}"]
        for r in runs
    ]  # fmt: skip
    table = html_table(
        ["variant", "depth", "train loss", "test accuracy", "max mixing gain", "seconds"], rows
    )
    figs = _figures(runs, s)
    report.add_section("Results", table, figs)
    settings = html.escape(json.dumps(asdict(s)))
    report.add_section("Settings", f"<p><code>{settings}</code></p>")
    out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": asdict(s), "runs": [asdict(r) for r in runs]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
    return report.write(out / "report.html")


REPORT_FILES = ("report.html", "results.json")
"""What ``skipkit transformers`` writes into its run folder."""


def run_command(args: argparse.Namespace) -> int:
    """``skipkit transformers`` (parsed by :mod:`skipkit._cli_transformer`): claim the run
    folder (see :func:`skipkit._runs.open_run`), train, write the report."""
    from skipkit.cli import claim_out, echo, out_folder, say

    s = QUICK if args.quick else Settings()
    if args.depths:
        s = Settings(**{**asdict(s), "depths": tuple(args.depths)})
    if args.steps:
        s = Settings(**{**asdict(s), "steps": args.steps})
    out_folder(args)
    out = claim_out(args, "transformers")
    with open_run(out, "transformers", overwrite=args.overwrite, writes=REPORT_FILES) as run:
        run.expect(*REPORT_FILES)
        n = len(s.depths) * len(s.variants)
        say(args, f"training {n} transformers on associative recall -> {out}")
        runs = run_experiment(s)
        path = write_report(runs, s, out)
        run.record(*REPORT_FILES)
    for line in findings(runs, s):
        echo(line)
    echo(f"report: {path}")
    return 0


__all__ = [
    "QUICK",
    "REPORT_FILES",
    "VARIANTS",
    "Settings",
    "VariantRun",
    "findings",
    "recall_data",
    "run_command",
    "run_experiment",
    "write_report",
]
