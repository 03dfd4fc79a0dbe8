"""The surgery examples run and check their own claims (function preserved, loss lower)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("surgery_*.py"))


def test_both_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {
        "surgery_retrofit_plain_net",
        "surgery_connect_encoder",
    }


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_surgery_example_runs(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "step 0" in out and ("after retrofit" in out or "encoder linked" in out)


def test_guide_snippets_run_and_print_what_the_guide_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    guide = (Path(__file__).parents[2] / "docs" / "guide_surgery.md").read_text()
    namespace: dict[str, object] = {}
    for block in re.findall(r"```python\n(.*?)```", guide, re.S):
        exec(compile(block, "docs/guide_surgery.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 7
    for line in printed:
        # list_skips rows and the error's fix are quoted as comments in the guide
        if line.startswith(("skips.", "merge=")):
            assert f"# {line}" in guide
