"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (later blocks build on earlier ones), in
a temporary folder, as ``__main__``. Two exceptions, both visible here and in the docs:

- A block whose first line is ``# not run: <reason>`` is skipped; the reason must say why
  (a download the test machine cannot make).
- A block that trains for minutes runs with a smaller setting: :data:`SMALLER` lists each
  text replacement, and each must still match the doc (a stale one fails the test).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # before any doc imports keras

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = "# not run:"

# Keras' torch backend converts tensors with np.array(x), which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# Run elsewhere, with checks on what they print.
ELSEWHERE = {"guide_surgery.md": ROOT / "tests" / "surgery" / "test_surgery_examples.py"}

# (file, text in the doc, what the test runs instead): the same code, minutes shorter.
SMALLER: list[tuple[str, str, str]] = [
    ("guide_diagnostics.md", "every=50", "every=2"),
    ("guide_diagnostics.md", "epochs=30", "epochs=1, batch_size=1000"),
    ("guide_diagnostics.md", "steps=51", "steps=3"),
    ("guide_training.md", 'create("resnet56"', 'create("resnet20"'),
    ("guide_training.md", "epochs=30, lr=0.1", "epochs=1, lr=0.1"),
    ("guide_training.md", "batch_size=128", "batch_size=1000"),
    ("guide_training.md", "(20, 56), epochs=30", "(8,), epochs=1, batch_size=1000"),
]


def blocks(path: Path) -> list[tuple[int, str]]:
    """``(line of the block's first code line, code)`` for each ```python block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def _shrink(name: str, code: str) -> str:
    for file, old, new in SMALLER:
        if file == name:
            code = code.replace(old, new)
    return code


def test_every_smaller_setting_still_matches_its_doc() -> None:
    for file, old, _ in SMALLER:
        assert old in (ROOT / "docs" / file).read_text(), f"{file} no longer has {old!r}"


def test_docs_are_found_and_not_run_blocks_say_why() -> None:
    assert {p.name for p in DOCS} >= {"README.md", "guide_keras.md", "guide_surgery.md"}
    for path in DOCS:
        for line, code in blocks(path):
            first = code.lstrip().splitlines()[0] if code.strip() else ""
            if first.startswith(NOT_RUN):
                assert len(first) > len(NOT_RUN) + 10, f"{path.name}:{line}: give the reason"
    for name, runner in ELSEWHERE.items():
        assert name in runner.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in DOCS if p.name not in ELSEWHERE and blocks(p)], ids=lambda p: p.name
)
def test_doc_blocks_run_as_written(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for line, code in blocks(path):
        if code.lstrip().startswith(NOT_RUN):
            continue
        # Leading newlines make tracebacks point at the doc's own line numbers.
        source = "\n" * (line - 1) + _shrink(path.name, code)
        try:
            exec(compile(source, str(path), "exec"), namespace)
        except Exception as err:
            pytest.fail(f"{path.name}, block at line {line}: {type(err).__name__}: {err}")
