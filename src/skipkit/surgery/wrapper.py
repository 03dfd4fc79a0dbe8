"""The wrappers that own added skips: :class:`SurgeryModule`, :class:`Grafted`,
:class:`Connected`.

A forward hook on ``src`` keeps its output for this forward pass; a forward hook on ``dst``
replaces dst's output with ``merge(adapter(src_out), dst_out)``. The adapters live in the
wrapper's ``skips`` (an ``nn.ModuleList`` of :class:`AddedSkip`), so ``state_dict``,
``deepcopy``, pickling, ``train()``/``eval()``, ``torch.compile`` and DDP treat them like any
other layer, while the wrapped model keeps its own structure and ``state_dict`` keys
(``wrapper.model.load_state_dict(pretrained)`` still works).

A *forward pass* is one call of the wrapped model: ``net(x)``, ``net.model(x)``, and each
call the model's own methods make (Hugging Face ``generate``'s loop), found by a pre-hook and
an always-called hook on the model itself (for :class:`Connected`, one call of the wrapper).
Every pass checks the order: each ``src`` and ``dst`` runs exactly once, ``src`` first. A kept
output is used by one pass only and dropped at its end, so a ``dst`` that runs outside a pass
(``net.model.layer3(h)`` on its own) raises instead of joining a stale tensor.

The wrapper behaves as the model it wraps: attributes it does not have itself come from the
model (``net.config``, ``net.device``, ``net.generate(...)``, timm's
``net.forward_features(x)``); a method reached this way runs with the skips, so a method
that calls submodules directly (``forward_features``) gets them too.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.shapes import Layout, infer_layout, normalize_layout
from skipkit.surgery import _api, _paths
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
        self._depth = 0  # open forward passes (calls of the wrapped model) right now
        self._loose = 0  # open model methods called through the wrapper (forward_features)
        self._pass_hook_ids: list[int] = []

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
        self._install_pass_hooks()

    def _install_pass_hooks(self) -> None:
        """Mark each call of the wrapped model as one forward pass (:class:`Grafted` only)."""

    def _open_pass(self) -> None:
        if self._depth == 0:
            self._begin()
        self._depth += 1

    def _close_pass(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            if sys.exc_info()[1] is not None:  # the pass raised: drop its state, keep its error
                self._begin()
            else:
                self._end()

    def _after_module(self, path: str, module: nn.Module, args: Any, output: Any) -> Any:
        if self._depth == 0 and not self._loose:
            # Outside any pass: a src output has no join to feed, and a dst has nothing to join.
            for i in self._into.get(path, ()):
                raise self._outside_pass_error(i)
            return None
        out = output
        # Joins first: the rest of the model, and any skip tapping this path, see the result.
        for i in self._into.get(path, ()):
            out = self._join(i, out)
        loose = self._depth == 0  # inside a model method called through the wrapper
        for i in self._from.get(path, ()):
            if loose:  # no pass bounds here: each src output starts the skip afresh
                self._phase[i], self._kept[i] = _WAITING, None
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

    def _outside_pass_error(self, i: int) -> RuntimeError:
        skip = self._skip(i)
        if torch._C._current_graph_task_id() != -1:
            return RuntimeError(
                f"{skip.label}: dst {show(skip.dst)} ran again during the backward pass: "
                "activation checkpointing (timm set_grad_checkpointing, Hugging Face "
                "gradient_checkpointing_enable, torch.utils.checkpoint) recomputes it without "
                "src's output, which added skips do not support. Fix: turn checkpointing off "
                "for the model wrapped by add_skip"
            )
        return RuntimeError(
            f"{skip.label}: dst {show(skip.dst)} ran before src {show(skip.src)} in this "
            "forward pass: it ran outside a forward pass of the wrapped model (a submodule, or "
            "a method such as forward_features, called on net.model directly), so there is no "
            "src output of this pass to join. Fix: call the wrapper (net(x)) or the model "
            "(net.model(x)), or call the method through the wrapper (net.forward_features(x))"
        )

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
                why = _api.checkpointing_error(self.host())
                if why is not None:
                    raise RuntimeError(f"{skip.label}: {what} in this forward pass: {why}")
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
        _api.check_no_checkpointing(host)
        for src, dst in pairs:
            for path, what in ((src, "src"), (dst, "dst")):
                _api.check_not_an_operation(host, path, what)
                resolve(host, path, what=what)
            if src == dst:
                raise ValueError(
                    f"src and dst are the same module {show(src)}; a skip joins the output "
                    "of one module into a later one. Fix: choose a dst that runs after src"
                )
        leaves: list[_paths.Leaf] = []
        paths = [p for pair in pairs for p in pair]
        seen = probe(host, paths, example_run, owner=self, leaves=leaves)
        for src, dst in pairs:
            check_order(src, dst, seen)
        lay = normalize_layout(layout)
        modules = _paths.module_paths(host)
        new = []
        for src, dst in pairs:
            # Layouts come from the tensors the example pass gave (where the channels of the
            # layers that made them are); module classes are the fallback.
            fallback = infer_layout(host)
            lay_dst = (
                lay
                or self._seen_layout(dst, seen, leaves)
                or infer_layout(modules[dst])
                or infer_layout(modules[src])
                or fallback
            )
            lay_src = lay or self._seen_layout(src, seen, leaves) or infer_layout(modules[src])
            new.append(
                build_skip(src, dst, seen, merge, shortcut, zero_init, lay_dst, lay_src or fallback)
            )
        for skip in new:
            skip.train(self.training)
            self.skips.append(skip)
        self._install()
        for skip in new:
            log.info("added skip %s", skip.extra_repr())

    @staticmethod
    def _seen_layout(
        path: str, seen: dict[str, _paths.Seen], leaves: list[_paths.Leaf]
    ) -> Layout | None:
        out = seen[path].output
        t = out[0] if isinstance(out, tuple | list) and out else out
        if not isinstance(t, torch.Tensor):
            return None
        return _paths.observed_layout(path, tuple(t.shape), leaves)

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

    Behaves as the model: an attribute the wrapper does not have comes from ``model``
    (``net.config``, ``net.generate(...)``, ``net.forward_features(x)``); methods reached so
    run with the skips. ``net.save_pretrained(...)`` (Hugging Face) saves the wrapped model
    only: the adapters are in ``net.skips`` (save the wrapper's ``state_dict`` for both).

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

    def _install_pass_hooks(self) -> None:
        model = self.model
        for hid in self._pass_hook_ids:
            model._forward_pre_hooks.pop(hid, None)
            _remove_hook(model, hid)
        self._pass_hook_ids = []
        if not len(self.skips):
            return  # the last skip removed: the model is left as it was
        # The end hook goes after every join hook (a skip into the root joins first).
        pre = model.register_forward_pre_hook(functools.partial(_pass_start, self), prepend=True)
        post = model.register_forward_hook(functools.partial(_pass_stop, self), always_call=True)
        self._pass_hook_ids = [pre.id, post.id]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)  # the model's own hooks bound the pass

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_modules" not in self.__dict__:
                raise  # copying / unpickling asks before the model is there
        return _api.pass_through(self, self._modules.get("model"), name)


def _pass_start(net: SurgeryModule, module: nn.Module, args: Any) -> None:
    net._open_pass()


def _pass_stop(net: SurgeryModule, module: nn.Module, args: Any, output: Any) -> None:
    net._close_pass()


class Connected(SurgeryModule):
    """Two models with A's intermediate outputs feeding B (:func:`connect`).

    ``forward(x_a, x_b=None)``: runs ``a`` on ``x_a``, then ``b`` on ``x_b`` (``x_a`` when
    ``x_b`` is ``None``; A's output when ``b_input="a_output"``). A tuple input is unpacked
    as positional arguments, a mapping as keyword arguments. Returns B's output, or
    ``(out_b, out_a)`` with ``return_a=True``.

    An attribute the wrapper does not have comes from B (the model whose output it returns).
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
        self._open_pass()
        try:
            out_a = call(self.a, x_a)
            if self.b_input == "a_output":
                out_b = call(self.b, out_a)
            else:
                out_b = call(self.b, x_a if x_b is None else x_b)
        except BaseException:
            self._depth -= 1
            self._begin()
            raise
        self._close_pass()
        return (out_b, out_a) if self.return_a else out_b

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_modules" not in self.__dict__:
                raise
        return _api.pass_through(self, self._modules.get("b"), name)
