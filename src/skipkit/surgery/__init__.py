"""Surgery: skips added to models that already exist, and skips between two models.

::

    model:  x ── … ── src ── … ── dst ──merge── … ──> y       add_skip(model, src, dst)
                       └── adapter ───┘

    A:      x_a ── … ── a_src ── …                            connect(A, B, {a_src: b_dst})
                          └── adapter ──┐
    B:      x_b ── … ───────────── b_dst ──merge── … ──> y

- :func:`taps` reads intermediate outputs (hooks, or torch.fx for operation names).
- :func:`add_skip` / :func:`connect` return ordinary ``nn.Module`` wrappers (:class:`Grafted`,
  :class:`Connected`) around deep copies; with ``zero_init=True`` the adapters start at zero,
  so the new model computes exactly the original function at step 0.
- :func:`list_skips` shows every skip skipkit knows in a model, :func:`remove_skip` undoes an
  added one, and :func:`skipkit.skips_disabled` switches all of them off.
"""

from __future__ import annotations

from skipkit.merges import TanhGate
from skipkit.skips import SkipInfo, skips_disabled
from skipkit.surgery.adapters import Modulate, ToMap, ZeroGain
from skipkit.surgery.added import AddedSkip
from skipkit.surgery.graft import add_skip, connect
from skipkit.surgery.listing import list_skips, remove_skip
from skipkit.surgery.taps import taps
from skipkit.surgery.wrapper import Connected, Grafted, SurgeryModule

__all__ = [
    "AddedSkip",
    "Connected",
    "Grafted",
    "Modulate",
    "SkipInfo",
    "SurgeryModule",
    "TanhGate",
    "ToMap",
    "ZeroGain",
    "add_skip",
    "connect",
    "list_skips",
    "remove_skip",
    "skips_disabled",
    "taps",
]
