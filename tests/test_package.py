"""The package namespace: lazily loaded names resolve to the real objects, and nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest

import skipkit
import skipkit.skips
import skipkit.surgery


def test_every_public_name_resolves_and_is_listed_by_dir() -> None:
    for name in skipkit.__all__:
        assert getattr(skipkit, name) is not None, name
    assert set(skipkit.__all__) <= set(dir(skipkit))
    assert skipkit.Residual is skipkit.skips.Residual
    assert skipkit.add_skip is skipkit.surgery.add_skip
    assert skipkit.ShapeMismatchError.__module__ == "skipkit.errors"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'skipkit' has no attribute 'Residul'"):
        _ = skipkit.Residul  # type: ignore[attr-defined]


def test_import_skipkit_loads_no_torch_until_a_torch_name_is_used() -> None:
    code = (
        "import sys, skipkit\n"
        "assert 'torch' not in sys.modules\n"
        "skipkit.Residual\n"
        "assert 'torch' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
