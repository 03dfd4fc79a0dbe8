"""The shared shape analysis (skipkit._plan): pure Python facts the planners build on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skipkit._plan import analyse_shapes, fit_dim, stride_for


@pytest.mark.parametrize(
    ("size_in", "size_out", "kind", "stride"),
    [
        (8, 8, "same", 1),
        (8, 4, "stride", 2),
        (7, 4, "stride", 2),  # odd sizes: a padded stride-2 conv gives ceil(7 / 2)
        (9, 3, "stride", 3),
        (10, 8, "crop", 1),  # a valid 3x3 conv: no stride gives 8
        (4, 8, "up", 1),
        (None, 8, "unknown", 1),
        (None, None, "same", 1),
    ],
)
def test_fit_dim(size_in: int | None, size_out: int | None, kind: str, stride: int) -> None:
    fit = fit_dim(size_in, size_out)
    assert (fit.kind, fit.stride) == (kind, stride)


def test_crop_upsample_and_pad_amounts() -> None:
    assert fit_dim(10, 8).margins == (1, 1)
    assert fit_dim(7, 4).margins == (1, 2)
    assert fit_dim(4, 8).scale == 2
    assert fit_dim(4, 6).scale is None
    assert fit_dim(8, 4).scale is None


def test_stride_for_matches_the_brute_force_search() -> None:
    for a in range(1, 40):
        for b in range(1, a):
            brute = next((s for s in range(2, a + 1) if -(-a // s) == b), None)
            assert stride_for(a, b) == brute, (a, b)


def test_analyse_channels_first_map() -> None:
    diff = analyse_shapes((2, 16, 7, 10), (2, 32, 4, 5), channel_axis=1)
    assert not diff.rank_changed and not diff.batch_changed
    assert (diff.channels_in, diff.channels_out, diff.channels_changed) == (16, 32, True)
    assert diff.strides == (2, 2)
    assert diff.kinds == {"stride"}
    assert not diff.same_size


def test_analyse_features_last_and_upsample() -> None:
    seq = analyse_shapes((2, 5, 8), (2, 5, 12), channel_axis=2)
    assert seq.same_size and seq.channels_changed
    up = analyse_shapes((1, 3, 4, 4), (1, 3, 8, 12), channel_axis=1)
    assert up.kinds == {"up"} and up.scales == (2, 3)
    assert analyse_shapes((1, 3, 4), (1, 3, 6), channel_axis=1).scales is None


def test_analyse_rank_and_batch_changes() -> None:
    rank = analyse_shapes((2, 3, 8, 8), (2, 192), channel_axis=1)
    assert rank.rank_changed and rank.dims == ()
    assert analyse_shapes((2, 3), (4, 3), channel_axis=1).batch_changed
    assert not analyse_shapes((None, 3), (4, 3), channel_axis=1).batch_changed


def test_the_analysis_imports_neither_torch_nor_keras() -> None:
    # Loaded from its file, so skipkit/__init__ (which imports torch) does not run.
    path = Path(__file__).parents[1] / "src" / "skipkit" / "_plan.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('plan', {str(path)!r})\n"
        "mod = sys.modules['plan'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "assert mod.fit_dim(7, 4).stride == 2\n"
        "print(sorted(m for m in ('torch', 'keras', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
