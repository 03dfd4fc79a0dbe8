"""Shared test settings: deterministic, single-threaded torch (the suite runs 2 workers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

torch.set_num_threads(1)

OpRecord = list[tuple[str, bool]]


class _RecordOps(TorchDispatchMode):
    """Records every ATen op dispatched, with whether its output is a channels-last 4-d
    tensor, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: OpRecord = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        cl = (
            isinstance(out, torch.Tensor)
            and out.dim() == 4
            and out.is_contiguous(memory_format=torch.channels_last)
        )
        self.ops.append((str(func), cl))
        return out


def _record(fn: Callable[[], object]) -> OpRecord:
    with _RecordOps() as mode:
        fn()
    return mode.ops


@pytest.fixture
def assert_same_ops() -> Callable[[Callable[[], object], Callable[[], object]], int]:
    """``assert_same_ops(mine, theirs)``: both functions dispatch exactly the same ATen ops
    (forward and backward alike), in the same order and memory formats; returns how many.
    For tests that an implementation does exactly a reference's work, so a timing gap can
    only be Python overhead or noise."""

    def check(mine: Callable[[], object], theirs: Callable[[], object]) -> int:
        a, b = _record(mine), _record(theirs)
        pairs = zip(a, b, strict=False)
        i = next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))
        assert a == b, (
            f"{len(a)} ops vs the reference's {len(b)}; first difference at op {i}: "
            f"{a[i : i + 1]} vs {b[i : i + 1]}"
        )
        return len(a)

    return check
