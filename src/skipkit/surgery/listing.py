"""Inspecting and undoing skips: :func:`list_skips`, :func:`remove_skip`."""

from __future__ import annotations

import dataclasses

from torch import nn

from skipkit.shapes import close_matches
from skipkit.skips import SkipInfo, SkipModule
from skipkit.surgery.wrapper import SurgeryModule


def list_skips(model: nn.Module) -> list[SkipInfo]:
    """Every skip skipkit knows in ``model``, in module order.

    Core blocks (:class:`skipkit.Residual`, :class:`skipkit.DenseBlock`, the blocks of
    :mod:`skipkit.models`: anything subclassing :class:`skipkit.SkipModule`) are described by
    their ``describe()``; skips added by :func:`skipkit.add_skip` / :func:`skipkit.connect`
    report their ``src`` and ``dst`` (relative to the wrapped model). Skips hard-coded in a
    ``forward`` (e.g. torchvision's ``BasicBlock``) are invisible to it.
    """
    out = []
    for path, m in model.named_modules():
        if not isinstance(m, SkipModule):
            continue
        info = m.describe()
        # the path in this model; a skip's own dst is its output unless it joins elsewhere
        dst = path if info.dst == info.path else info.dst
        out.append(dataclasses.replace(info, path=path, dst=dst))
    return out


def remove_skip(model: nn.Module, which: int | str) -> nn.Module:
    """Undo one added skip **in place**; returns ``model``.

    The wrapped model's behaviour without that skip is restored exactly (its hook goes, its
    adapter parameters leave ``state_dict``); other added skips keep working. Rebuild the
    optimizer afterwards, as after any change of parameters.

    Args:
        model: a result of :func:`skipkit.add_skip` / :func:`skipkit.connect`, or a module
            containing one.
        which: an index into :func:`list_skips` ``(model)``, the skip's ``path`` there
            (``"skips.0"``), or its ``dst`` path (when only one added skip goes there).

    Raises:
        ValueError: no such added skip, an ambiguous ``dst``, or a skip built into the
            model (switch those off with :func:`skipkit.skips_disabled` instead).
    """
    infos = list_skips(model)
    added = [s for s in infos if s.added]
    if isinstance(which, bool) or not isinstance(which, int | str):
        raise TypeError(f"which must be an index or a path, got {type(which).__name__}")
    if isinstance(which, int):
        if not -len(infos) <= which < len(infos):
            raise ValueError(
                f"skip index {which} out of range: the model has {len(infos)} skips "
                f"({len(added)} added); see skipkit.list_skips(model)"
            )
        info = infos[which]
    else:
        matches = [s for s in infos if s.path == which] or [s for s in added if s.dst == which]
        if not matches:
            hint = close_matches(which, [s.dst for s in added] + [s.path for s in added])
            did_you_mean = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise ValueError(
                f"no added skip at {which!r}.{did_you_mean} Added skips: "
                f"{[f'{s.path} ({s.tap} -> {s.dst})' for s in added] or 'none'}"
            )
        if len(matches) > 1:
            raise ValueError(
                f"{len(matches)} added skips go into {which!r}: "
                f"{[f'{infos.index(s)}: {s.path} ({s.tap} -> {s.dst})' for s in matches]}. "
                "Fix: pass the index or the path"
            )
        info = matches[0]
    if not info.added:
        raise ValueError(
            f"skip {info.path!r} ({info.kind}) is built into the model; remove_skip undoes "
            "skips added with add_skip/connect. Fix: switch it off with "
            "skipkit.skips_disabled(model), or rebuild the model without it"
        )
    # Added skips live in a wrapper's ``skips`` list: "skips.<i>" or "<wrapper>.skips.<i>".
    if info.path.startswith("skips."):
        owner_path, index = "", info.path.removeprefix("skips.")
    else:
        owner_path, _, index = info.path.rpartition(".skips.")
    owner = model.get_submodule(owner_path)
    assert isinstance(owner, SurgeryModule)
    owner.remove(int(index))
    return model
