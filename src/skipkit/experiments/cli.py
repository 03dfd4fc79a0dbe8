"""Handlers of ``skipkit demo`` and ``skipkit degradation`` (parsers in :mod:`skipkit.cli`).

Loaded when one of these commands runs (see :data:`skipkit.cli.HANDLERS`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from skipkit._cli_runs import claim_out, out_folder, recipe_options
from skipkit._cliargs import (
    DEMO_DEPTHS,
    DEMO_EPOCHS,
    MAX_DEPTH,
    QUICK_DEPTHS,
    QUICK_EPOCHS,
    echo,
    say,
)
from skipkit._runs import open_run
from skipkit.data import get_dataset
from skipkit.diagnostics.sections import report_sections
from skipkit.experiments.degradation import (
    DEGRADATION_FILES,
    check_depth,
    format_table,
    run_degradation,
)
from skipkit.experiments.report import Report, write_degradation_report

__all__ = ["cmd_degradation", "cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    if args.quick:  # in this process: starting worker interpreters would dominate
        return _degradation(
            args,
            "demo",
            depths=QUICK_DEPTHS,
            epochs=QUICK_EPOCHS,
            workers=args.workers or 1,
            threads=1,
            dataset="mnist1d",
            root=None,
            diagnostics=not args.no_diagnostics,
            quick=True,
        )
    return _degradation(
        args,
        "demo",
        depths=DEMO_DEPTHS,
        epochs=DEMO_EPOCHS,
        workers=args.workers,
        dataset="mnist1d",
        root=None,
        diagnostics=not args.no_diagnostics,
    )


def cmd_degradation(args: argparse.Namespace) -> int:
    return _degradation(
        args,
        "degradation",
        depths=args.depths,
        workers=args.workers,
        dataset=args.dataset,
        root=args.data_dir,
        diagnostics=args.diagnostics,
        **recipe_options(args),
    )


def _degradation(
    args: argparse.Namespace,
    command: str,
    *,
    depths: Sequence[int],
    epochs: int,
    workers: int | None,
    dataset: str,
    root: str | None,
    diagnostics: bool = False,
    quick: bool = False,
    **kw: Any,
) -> int:
    if not depths:
        raise ValueError("give at least one depth, e.g. --depths 20,56")
    for d in depths:
        check_depth(d)
        if d > MAX_DEPTH:
            raise ValueError(f"depth {d} is deeper than {MAX_DEPTH}, the deepest supported")
    out_folder(args)
    get_dataset(dataset, root=root)  # a missing data folder fails before anything is written
    t0 = time.perf_counter()
    out = claim_out(args, command)
    with open_run(
        out, "degradation", resume=args.resume, overwrite=args.overwrite, writes=DEGRADATION_FILES
    ) as run:
        run.expect(*DEGRADATION_FILES)
        say(args, f"training {2 * len(depths)} networks ({epochs} epochs each) -> {out}")
        result = run_degradation(
            depths,
            dataset=dataset,
            root=root,
            epochs=epochs,
            out_dir=run,
            workers=workers,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet and sys.stderr.isatty(),
            **kw,
        )
        extend = None
        if diagnostics:
            say(args, "measuring gradient flow, shattered gradients, loss landscapes and lesions")

            def extend(report: Report) -> None:
                found = report_sections(
                    out, depths=result.depths, dataset=dataset, seed=kw.get("seed", 0), quick=quick
                )
                for s in found:  # before the settings, which stay last
                    report.add_section(
                        s.title, s.html, s.images, index=len(report.sections) - 1, data=s.data
                    )

        before = {p.name for p in out.iterdir()}
        report = write_degradation_report(result, out, extend=extend)
        # the report's files (and any a report section adds) belong to this run
        made = {p.name for p in out.iterdir() if p.is_file()} - before
        run.expect(*sorted(made))
        run.record(*DEGRADATION_FILES, *sorted(made))
    echo(format_table(result))
    if len(result.depths) > 1:
        v = result.verdict()
        shown = v["plain_degrades"] and v["residual_holds"]
        echo(
            "degradation shown: deeper plain net trains worse, residual twin does not"
            if shown
            else "degradation not shown in this run (see the report)"
        )
    echo(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return 0
