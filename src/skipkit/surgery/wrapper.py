"""The wrappers that own added skips: :class:`SurgeryModule`, :class:`Grafted`,
:class:`Connected`.

A forward hook on ``src`` keeps its output for this forward pass; a forward hook on ``dst``
replaces dst's output with ``merge(adapter(src_out), dst_out)``. The adapters live in the
wrapper's ``skips`` (an ``nn.ModuleList`` of :class:`AddedSkip`), so ``state_dict``,
``deepcopy``, pickling, ``train()``/``eval()``, ``torch.compile`` and DDP treat them like any
other layer, while the wrapped model keeps its own structure and ``state_dict`` keys
(``wrapper.model.load_state_dict(pretrained)`` still works).

Every forward pass of the wrapper checks the order: each ``src`` and ``dst`` runs exactly
once, ``src`` first. A kept output is used by one pass only and dropped at its end.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.shapes import infer_layout, normalize_layout
from skipkit.surgery import _paths
from skipkit.surgery._paths import call, first_tensor, probe, resolve, show, version_of
from skipkit.surgery.added import AddedSkip
from skipkit.surgery.build import build_skip, check_order

log = logging.getLogger(__name__)

_WAITING, _HELD, _DONE = 0, 1, 2


class SurgeryModule(nn.Module):
    """Base of :class:`Grafted` and :class:`Connected`: owns the added skips and the hooks.

    Subclasses hold the model(s) and call :meth:`_begin` / :meth:`_end` around one forward.
    Not thread-safe (one forward at a time per module, as with any stateful hooks);
    ``nn.DataParallel`` replicas share hooks and are not supported (use DDP).
    """

    def __init__(self, **models: nn.Module) -> None:
        super().__init__()
        for name, model in models.items():  # registered first: their keys lead state_dict
            self.add_module(name, model)
        self.skips = nn.ModuleList()
        self._hook_ids: dict[str, int] = {}
        self._into: dict[str, list[int]] = {}
        self._from: dict[str, list[int]] = {}
        self._phase: list[int] = []
        self._kept: list[torch.Tensor | None] = []
        self._versions: list[int | None] = []

    def host(self) -> nn.Module:
        """The module that skip paths are relative to."""
        return self

    # ----------------------------------------------------------------- hooks & bookkeeping
    def _install(self) -> None:
        """(Re)build the per-path tables and make exactly one hook sit on each used path."""
        self._into, self._from = {}, {}
        for i, skip in enumerate(self.skips):
            assert isinstance(skip, AddedSkip)
            self._into.setdefault(skip.dst, []).append(i)
            self._from.setdefault(skip.src, []).append(i)
        n = len(self.skips)
        self._phase, self._kept, self._versions = [_WAITING] * n, [None] * n, [None] * n
        modules = _paths.module_paths(self.host())
        used = set(self._into) | set(self._from)
        for path in list(self._hook_ids):
            if path not in used:
                hid = self._hook_ids.pop(path)
                _remove_hook(modules[path], hid)
        for path in sorted(used - set(self._hook_ids)):
            hook = functools.partial(self._after_module, path)
            # A partial of a bound method survives deepcopy and pickle with the wrapper.
            self._hook_ids[path] = modules[path].register_forward_hook(hook).id

    def _after_module(self, path: str, module: nn.Module, args: Any, output: Any) -> Any:
        out = output
        # Joins first: the rest of the model, and any skip tapping this path, see the result.
        for i in self._into.get(path, ()):
            out = self._join(i, out)
        for i in self._from.get(path, ()):
            self._take(i, out)
        return out if out is not output else None

    def _skip(self, i: int) -> AddedSkip:
        skip = self.skips[i]
        assert isinstance(skip, AddedSkip)
        return skip

    def _take(self, i: int, output: Any) -> None:
        skip = self._skip(i)
        if self._phase[i] != _WAITING:
            when = "again after dst" if self._phase[i] == _DONE else "twice before dst"
            raise RuntimeError(
                f"{skip.label}: src {show(skip.src)} ran {when} in one forward pass; an added "
                "skip needs src and dst to run exactly once per forward. Fix: tap a module "
                "that runs once (e.g. its parent), or give the shared module one instance "
                "per use"
            )
        t = first_tensor(output, path=skip.src, role="src")
        if skip.clone_src:
            t = t.clone()
        self._versions[i] = version_of(t)
        self._kept[i] = t
        self._phase[i] = _HELD

    def _join(self, i: int, output: Any) -> Any:
        skip = self._skip(i)
        state, kept = self._phase[i], self._kept[i]
        if state != _HELD or kept is None:
            what = (
                "ran twice in one forward pass"
                if state == _DONE
                else f"ran before src {show(skip.src)} in this forward pass (or src did not run)"
            )
            raise RuntimeError(
                f"{skip.label}: dst {show(skip.dst)} {what}; an added skip needs src to run "
                "once, then dst once, inside each forward of the wrapper. Fix: call the wrapper "
                "(not a submodule on its own), or choose a dst that runs after src"
            )
        if version_of(kept) != self._versions[i]:
            raise RuntimeError(
                f"{skip.label}: the output of src {show(skip.src)} was modified in place "
                "before dst ran (an inplace=True layer after src, seen only in this mode or "
                "for this input), so the skip would carry the wrong values. Fix: tap the "
                "in-place layer itself, or make it out-of-place (inplace=False)"
            )
        self._kept[i], self._phase[i] = None, _DONE
        branch = first_tensor(output, path=skip.dst, role="dst")
        y = skip(kept, branch)
        if isinstance(output, torch.Tensor):
            return y
        if hasattr(output, "_fields"):  # a namedtuple
            return type(output)(y, *output[1:])
        return type(output)([y, *output[1:]])

    def _begin(self) -> None:
        # A pass that raised half-way leaves state behind; it must never leak into this one.
        for i in range(len(self._phase)):
            self._phase[i], self._kept[i] = _WAITING, None

    def _end(self) -> None:
        for i, state in enumerate(self._phase):
            if state != _DONE:
                skip = self._skip(i)
                what = (
                    f"dst {show(skip.dst)} did not run after src"
                    if state == _HELD
                    else f"neither src {show(skip.src)} nor dst {show(skip.dst)} ran"
                )
                self._begin()
                raise RuntimeError(
                    f"{skip.label}: {what} in this forward pass, so the added skip was not "
                    "applied (data-dependent control flow?). Fix: choose modules on the path "
                    "every input takes"
                )
        self._begin()

    # ------------------------------------------------------------------------ building
    def _graft(
        self,
        pairs: Sequence[tuple[str, str]],
        example_run: Any,
        *,
        merge: str | Merge,
        shortcut: str | nn.Module,
        zero_init: bool,
        layout: str | None,
    ) -> None:
        """Probe once with the example, then build and install one AddedSkip per pair."""
        host = self.host()
        for src, dst in pairs:
            resolve(host, src, what="src")
            resolve(host, dst, what="dst")
            if src == dst:
                raise ValueError(
                    f"src and dst are the same module {show(src)}; a skip joins the output "
                    "of one module into a later one. Fix: choose a dst that runs after src"
                )
        seen = probe(host, [p for pair in pairs for p in pair], example_run, owner=self)
        for src, dst in pairs:
            check_order(src, dst, seen)
        lay = normalize_layout(layout)
        modules = _paths.module_paths(host)
        new = []
        for src, dst in pairs:
            # The tensors' layouts follow the layers that made them; the model's is a fallback.
            fallback = infer_layout(host)
            lay_dst = lay or infer_layout(modules[dst]) or infer_layout(modules[src]) or fallback
            lay_src = lay or infer_layout(modules[src]) or fallback
            new.append(build_skip(src, dst, seen, merge, shortcut, zero_init, lay_dst, lay_src))
        for skip in new:
            skip.train(self.training)
            self.skips.append(skip)
        self._install()
        for skip in new:
            log.info("added skip %s", skip.extra_repr())

    def remove(self, index: int) -> None:
        """Remove the ``index``-th added skip of this wrapper; the rest keep working."""
        del self.skips[index]
        self._install()


def _remove_hook(module: nn.Module, hook_id: int) -> None:
    # RemovableHandles do not survive deepcopy/pickle, but the ids (dict keys) do.
    for hooks in (
        module._forward_hooks,
        module._forward_hooks_with_kwargs,
        module._forward_hooks_always_called,
    ):
        hooks.pop(hook_id, None)


class Grafted(SurgeryModule):
    """A model with skips added by :func:`add_skip`; computes ``model(*args, **kwargs)``.

    Attributes:
        model: the (deep-copied) model, structure and ``state_dict`` keys unchanged; the
            wrapper's keys are ``model.*`` and ``skips.<i>.*``.
        skips: the :class:`AddedSkip` modules, in the order they were added.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model=model)
        self.model: nn.Module

    def host(self) -> nn.Module:
        return self.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._begin()
        out = self.model(*args, **kwargs)
        self._end()
        return out


class Connected(SurgeryModule):
    """Two models with A's intermediate outputs feeding B (:func:`connect`).

    ``forward(x_a, x_b=None)``: runs ``a`` on ``x_a``, then ``b`` on ``x_b`` (``x_a`` when
    ``x_b`` is ``None``; A's output when ``b_input="a_output"``). A tuple input is unpacked
    as positional arguments, a mapping as keyword arguments. Returns B's output, or
    ``(out_b, out_a)`` with ``return_a=True``.

    Skip paths are ``"a.<path in A>"`` and ``"b.<path in B>"``. With ``freeze_a`` A's
    parameters do not require gradients and A stays in eval mode (BatchNorm uses its running
    statistics, dropout is off) even after ``train()``.
    """

    def __init__(
        self,
        a: nn.Module,
        b: nn.Module,
        *,
        freeze_a: bool = False,
        return_a: bool = False,
        b_input: str = "input",
    ) -> None:
        if b_input not in ("input", "a_output"):
            raise ValueError(f"b_input must be 'input' or 'a_output', got {b_input!r}")
        super().__init__(a=a, b=b)
        self.a: nn.Module
        self.b: nn.Module
        self.freeze_a, self.return_a, self.b_input = freeze_a, return_a, b_input
        if freeze_a:
            a.requires_grad_(False)
            a.eval()

    def train(self, mode: bool = True) -> Connected:
        super().train(mode)
        if self.freeze_a:
            self.a.eval()
        return self

    def forward(self, x_a: Any, x_b: Any = None) -> Any:
        self._begin()
        out_a = call(self.a, x_a)
        if self.b_input == "a_output":
            out_b = call(self.b, out_a)
        else:
            out_b = call(self.b, x_a if x_b is None else x_b)
        self._end()
        return (out_b, out_a) if self.return_a else out_b
