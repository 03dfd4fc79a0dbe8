"""The degradation problem from Python: plain vs residual twins at depths 20 and 56.

    python examples/degradation_mnist1d.py      # ~1.5 min on an idle 2-core CPU

The same as ``skipkit demo``: trains four networks in parallel worker processes, prints the
table and writes runs/example_degradation/report.html. The ``extend`` hook shows how to add
a section of your own to the report.
"""

from __future__ import annotations

from skipkit.experiments import format_table, run_degradation
from skipkit.experiments.report import Report, html_table, write_degradation_report

if __name__ == "__main__":  # worker processes are plain interpreters; the guard is good form
    result = run_degradation((20, 56), epochs=20, out_dir="runs/example_degradation")
    print(format_table(result))
    print(result.verdict())

    def extend(report: Report) -> None:
        gaps = [
            [
                f"{d} layers",
                f"{100 * (result.get(d, False).train_error - result.get(d, True).train_error):.2f}",
            ]
            for d in result.depths
        ]
        report.add_section(
            "What the skips bought",
            html_table(["depth", "plain minus residual training error (points)"], gaps),
        )

    path = write_degradation_report(result, "runs/example_degradation", extend=extend)
    print(f"report: {path}")
