"""Building added skips from one probing pass: order checks, adapter planning, zero init."""

from __future__ import annotations

import logging

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.shapes import Layout, ShapeMismatchError, channel_dim, resolve_layout
from skipkit.surgery import _paths
from skipkit.surgery._paths import first_tensor, show
from skipkit.surgery.adapters import (
    check_join,
    check_zero_start,
    plan_adapter,
    resolve_surgery_merge,
    skip_shape_after,
    zero_initialise,
)
from skipkit.surgery.added import AddedSkip

log = logging.getLogger(__name__)


def check_order(src: str, dst: str, seen: dict[str, _paths.Seen]) -> None:
    label = f"{src or '<root>'} -> {dst or '<root>'}"
    for path, role in ((src, "src"), (dst, "dst")):
        s = seen[path]
        if s.calls == 0:
            raise ValueError(
                f"{label}: {role} {show(path)} did not run on the example input, so there is "
                "nothing to join. Fix: choose a submodule the forward pass calls"
            )
        if s.calls > 1:
            raise ValueError(
                f"{label}: {role} {show(path)} ran {s.calls} times in one forward pass "
                "(a shared or repeated module); an added skip needs one output per pass. "
                "Fix: tap a module that runs once (e.g. its parent), or give the shared "
                "module one instance per use"
            )
    if seen[dst].finished < seen[src].finished:
        raise ValueError(
            f"{label}: dst {show(dst)} runs before src {show(src)} (dst's output is ready "
            "first), so src's output cannot flow into it. Fix: swap src and dst, or choose a "
            "dst later in the forward pass"
        )


def build_skip(
    src: str,
    dst: str,
    seen: dict[str, _paths.Seen],
    merge_spec: str | Merge,
    shortcut: str | nn.Module,
    zero_init: bool,
    layout: Layout | None,
    src_layout: Layout | None,
) -> AddedSkip:
    label = f"{src or '<root>'} -> {dst or '<root>'}"
    s_out = first_tensor(seen[src].output, path=src, role="src")
    d_out = first_tensor(seen[dst].output, path=dst, role="dst")
    s_shape, d_shape = tuple(s_out.shape), tuple(d_out.shape)
    cdim = channel_dim(resolve_layout(layout, len(d_shape)), len(d_shape))
    merge = resolve_surgery_merge(merge_spec, zero_init=zero_init, dst_channels=d_shape[cdim])
    merge.path = label
    check_zero_start(merge, zero_init=zero_init, label=label)
    kind = "module" if isinstance(shortcut, nn.Module) else shortcut
    adapter = plan_adapter(
        s_shape,
        d_shape,
        kind=shortcut,
        merge=merge,
        layout=layout,
        src_layout=src_layout,
        label=label,
    )
    dtype = d_out.dtype if d_out.is_floating_point() else None
    adapter = adapter.to(device=d_out.device, dtype=dtype).eval()
    try:
        skip_shape = skip_shape_after(adapter, s_out)
    except (RuntimeError, ValueError, IndexError) as e:
        raise _shortcut_error(label, s_shape, d_shape, e) from e
    merge.setup(skip_shape, d_shape, layout, device=d_out.device, dtype=dtype)
    adapter = zero_initialise(
        adapter,
        merge,
        zero_init=zero_init,
        skip_shape=skip_shape,
        layout=layout,
        custom_shortcut=kind == "module",
    ).to(device=d_out.device, dtype=dtype)
    seen_version = seen[dst].versions_then.get(src, seen[src].version)
    skip = AddedSkip(
        src,
        dst,
        adapter,
        merge,
        zero_init=zero_init,
        clone_src=seen_version != seen[src].version,
        src_shape=s_shape,
        dst_shape=d_shape,
    )
    if skip.clone_src:
        log.info("%s: a later layer modifies src's output in place; it will be copied", label)
    skip.eval()
    with torch.no_grad():
        joined = skip(s_out, d_out)
    check_join(joined, d_out, zero_init=zero_init, merge=merge, label=label)
    return skip


def _shortcut_error(
    label: str, s_shape: tuple[int, ...], d_shape: tuple[int, ...], e: Exception
) -> ValueError:
    return ShapeMismatchError(
        f"the shortcut cannot take src's output: {e}",
        path=label,
        skip_shape=s_shape,
        branch_shape=d_shape,
        fixes=["give a shortcut module that maps src's output to dst's shape"],
    )
