"""Skips added to models that already exist: :func:`add_skip` and :func:`connect`.

::

    model:  x ── … ── src ── … ── dst ──merge── … ──> y
                       │              │
                       └── adapter ───┘        (AddedSkip: adapter + merge)

The model is deep-copied into a wrapper (:class:`Grafted`, or :class:`Connected` for two
models). A forward hook on ``src`` keeps its output for this forward pass; a forward hook on
``dst`` replaces dst's output with ``merge(adapter(src_out), dst_out)``. The adapters live
in the wrapper's ``skips`` (an ``nn.ModuleList`` of :class:`AddedSkip`), so ``state_dict``,
``deepcopy``, pickling, ``train()``/``eval()``, ``torch.compile`` and DDP treat them like
any other layer, while the wrapped model keeps its own structure and ``state_dict`` keys
(``wrapper.model.load_state_dict(pretrained)`` still works).

Every forward pass of the wrapper checks the order: each ``src`` and ``dst`` runs exactly
once, ``src`` first. A kept output is used by one pass only and dropped at its end.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from skipkit.merges import Merge
from skipkit.shapes import (
    Layout,
    ShapeMismatchError,
    channel_dim,
    fmt_shape,
    infer_layout,
    normalize_layout,
    resolve_layout,
)
from skipkit.skips import SkipModule
from skipkit.surgery import _paths
from skipkit.surgery._paths import call, first_tensor, probe, resolve, show
from skipkit.surgery.adapters import (
    check_join,
    describe_adapter,
    merge_label,
    plan_adapter,
    resolve_surgery_merge,
    skip_shape_after,
    zero_initialise,
)

log = logging.getLogger(__name__)

_WAITING, _HELD, _DONE = 0, 1, 2


class AddedSkip(SkipModule):
    """One added skip: ``y = merge(adapter(s), b)`` with ``s`` = src's output, ``b`` = dst's.

    Shapes: ``s`` is whatever ``src`` gives (e.g. ``(N, C_s, H_s, W_s)``); ``b`` and ``y``
    have dst's shape (e.g. ``(N, C_d, H_d, W_d)``). With ``skip_enabled`` false (see
    :func:`skipkit.skips_disabled`) the result is ``b``: the original model.

    Attributes:
        src, dst: module paths, relative to the wrapper's model (``"a.…"``/``"b.…"`` for
            :class:`Connected`).
        adapter: the shortcut (identity, 1×1 conv + BN, Linear, resample, …, plus any gain).
        merge: a :class:`skipkit.Merge`.
        merge_name: the merge as given (``"add"``, ``"rezero"``, …).
        clone_src: copy src's output when taken, because a later layer modifies it in place.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        adapter: nn.Module,
        merge: Merge,
        *,
        merge_name: str,
        zero_init: bool,
        clone_src: bool = False,
        src_shape: Sequence[int] = (),
        dst_shape: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.src, self.dst = src, dst
        self.adapter = adapter
        self.merge = merge
        self.merge_name = merge_name
        self.zero_init = zero_init
        self.clone_src = clone_src
        self.src_shape = tuple(int(s) for s in src_shape)
        self.dst_shape = tuple(int(s) for s in dst_shape)
        self.path = self.label
        merge.path = self.label

    @property
    def label(self) -> str:
        """``"src -> dst"``, for messages."""
        return f"{self.src or '<root>'} -> {self.dst or '<root>'}"

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``(src output, dst output) -> dst-shaped output``."""
        if not self.skip_enabled:
            return branch
        if skip.device != branch.device:  # src and dst on different devices (model parallel)
            skip = skip.to(branch.device)
        return self.merge(self.adapter(skip), branch)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "AddedSkip",
            "tap": self.src,
            "dst": self.dst,
            "shortcut": describe_adapter(self.adapter),
            "merge": self.merge_name,
            "parameters": sum(p.numel() for p in self.parameters()),
            "enabled": self.skip_enabled,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.label}: {fmt_shape(self.src_shape)} -> {fmt_shape(self.dst_shape)}, "
            f"merge={self.merge_name!r}, zero_init={self.zero_init}"
        )


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
        self._versions: list[int] = []

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
        self._phase, self._kept, self._versions = [_WAITING] * n, [None] * n, [0] * n
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
        if not torch.compiler.is_compiling():
            self._versions[i] = t._version
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
        if not torch.compiler.is_compiling() and kept._version != self._versions[i]:
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
        seen = probe(host, [p for pair in pairs for p in pair], example_run)
        for src, dst in pairs:
            _check_order(src, dst, seen)
        lay = normalize_layout(layout)
        modules = _paths.module_paths(host)
        new = []
        for src, dst in pairs:
            # The tensors' layouts follow the layers that made them; the model's is a fallback.
            fallback = infer_layout(host)
            lay_dst = lay or infer_layout(modules[dst]) or infer_layout(modules[src]) or fallback
            lay_src = lay or infer_layout(modules[src]) or fallback
            new.append(_build(src, dst, seen, merge, shortcut, zero_init, lay_dst, lay_src))
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


def _check_order(src: str, dst: str, seen: dict[str, _paths.Seen]) -> None:
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


def _build(
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
        raise _paths_error(label, s_shape, d_shape, e) from e
    merge.setup(skip_shape, d_shape, layout, device=d_out.device, dtype=dtype)
    adapter = zero_initialise(
        adapter,
        merge,
        spec=merge_spec,
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
        merge_name=merge_label(merge_spec, merge),
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


def _paths_error(
    label: str, s_shape: tuple[int, ...], d_shape: tuple[int, ...], e: Exception
) -> ValueError:
    return ShapeMismatchError(
        f"the shortcut cannot take src's output: {e}",
        path=label,
        skip_shape=s_shape,
        branch_shape=d_shape,
        fixes=["give a shortcut module that maps src's output to dst's shape"],
    )


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


def _example_run(module: nn.Module, example: Any) -> Any:
    return lambda: call(module, example)


def add_skip(
    model: nn.Module,
    src: str | nn.Module,
    dst: str | nn.Module,
    *,
    merge: str | Merge = "add",
    shortcut: str | nn.Module = "auto",
    example: Any = None,
    zero_init: bool = True,
    layout: str | None = None,
) -> SurgeryModule:
    """Join the output of submodule ``src`` into the output of ``dst`` (which runs later).

    ``dst``'s output ``b`` becomes ``merge(adapter(s), b)`` with ``s`` = src's output; the
    result keeps ``b``'s shape, so the rest of the model runs unchanged. For example
    ``(N, 64, 8, 8)`` from ``src`` into ``(N, 256, 2, 2)`` at ``dst`` plans a 1×1 conv with
    stride 4 + BatchNorm.

    The input model is **not modified**: the result is a :class:`Grafted` wrapper around a
    deep copy (reach the copy as ``result.model``). Called on a wrapper (a result of
    ``add_skip`` or :func:`connect`), it returns a copy of that wrapper with one more skip,
    and paths stay relative to the original model(s).

    Args:
        model: any ``nn.Module`` (fx-traceable or not: hooks do the work).
        src, dst: module paths as in ``model.named_modules()`` (``''`` is the whole model,
            usable as ``dst``), or the submodules themselves.
        merge: ``"add"`` (default), ``"concat"`` (reduced back to dst's width), ``"mul"``,
            ``"gate"``, ``"rezero"``, ``"skipinit"``, ``"layerscale"``, ``"weighted"`` or a
            :class:`skipkit.Merge` (see :mod:`skipkit.surgery.adapters` for the formulas).
        shortcut: ``"auto"`` (identity, 1×1 conv + BN with stride, Linear, resample, crop,
            global pool + Linear for maps into vectors), another kind of
            :func:`skipkit.plan_shortcut`, or an ``nn.Module`` mapping src's output to what
            the merge needs.
        example: an input for ``model`` (a tensor; a tuple of positional arguments; a dict
            of keyword arguments). Required: one forward pass finds the shapes and checks
            the order. It runs in eval mode without gradients.
        zero_init: start the adapter at zero, so the result computes exactly the original
            function at step 0 (ControlNet's zero convolutions) and then learns to use the
            skip.
        layout: ``"NC"`` / ``"NLC"`` / ``"NF"``; inferred from dst, src or the model.

    Returns:
        A :class:`Grafted` (or :class:`Connected`) module.

    Raises:
        ValueError: an unknown path (with close matches), ``src == dst``, a module that runs
            more than once per forward or not at all, ``dst`` running before ``src``, a merge
            that does not start as the identity with ``zero_init``, or no ``example``.
        ShapeMismatchError: no shortcut fits src's output to dst's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"add_skip needs an nn.Module, got {type(model).__name__}")
    if example is None:
        raise ValueError(
            "add_skip needs example=<an input for the model> (a tensor, a tuple of positional "
            "arguments or a dict of keyword arguments): one forward pass finds the shapes of "
            "src and dst and checks that src runs first"
        )
    root = model.host() if isinstance(model, SurgeryModule) else model
    src = src if isinstance(src, str) else _paths.path_of(root, src, what="src")
    dst = dst if isinstance(dst, str) else _paths.path_of(root, dst, what="dst")
    if isinstance(model, SurgeryModule):
        new: SurgeryModule = copy.deepcopy(model)
    else:
        new = Grafted(copy.deepcopy(model))
        new.training = model.training  # the wrapper (and new adapters) follow the model's mode
    new._graft(
        [(src, dst)],
        _example_run(new, example),
        merge=merge,
        shortcut=shortcut,
        zero_init=zero_init,
        layout=layout,
    )
    return new


def _link_path(path: str, model: nn.Module, prefix: str, what: str) -> str:
    """A path inside model A or B as a path inside the Connected wrapper."""
    if not isinstance(path, str):
        raise TypeError(f"connect links are module paths (str), got {type(path).__name__}")
    paths = _paths.module_paths(model)
    if path in paths:
        return f"{prefix}.{path}" if path else prefix
    if path.startswith(prefix + ".") and path[len(prefix) + 1 :] in paths:
        return path
    raise _paths.unknown_path_error(path, model, what=what)


def connect(
    model_a: nn.Module,
    model_b: nn.Module,
    links: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    merge: str | Merge = "add",
    example: Any = None,
    zero_init: bool = True,
    freeze_a: bool = False,
    return_a: bool = False,
    b_input: str = "input",
    layout: str | None = None,
) -> Connected:
    """Run A, then B, with A's intermediate outputs joined into B at the linked points.

    ::

        x_a ── A: … a_src ── …            ──> out_a
                      │
                   adapter (zero at step 0)
                      │
        x_b ── B: … ── b_dst ──merge── … ──> out_b

    Args:
        model_a, model_b: any modules; both are deep-copied (the inputs are not modified).
        links: ``{"path in A": "path in B"}``, or ``(a_path, b_path)`` pairs (one A output
            may feed several B points). ``"a."``/``"b."`` prefixes are accepted.
        merge, zero_init, layout: as in :func:`add_skip`, for every link (add a link with a
            different merge afterwards with ``add_skip(result, "a.…", "b.…", ...)``).
        example: the input of both models (a tensor), or a pair ``(x_a, x_b)`` when they
            differ; each may itself be a tuple (positional args) or dict (keyword args).
            With ``b_input="a_output"`` it is A's input only. Required.
        freeze_a: A's parameters stop requiring gradients and A stays in eval mode.
        return_a: return ``(out_b, out_a)`` instead of ``out_b``.
        b_input: ``"input"`` (B gets ``x_b``, or ``x_a`` when no ``x_b`` is given) or
            ``"a_output"`` (B gets A's output: an encoder-decoder with long skips).

    Returns:
        A :class:`Connected` module; ``forward(x_a, x_b=None)``.

    Raises:
        ValueError, ShapeMismatchError: as :func:`add_skip`, naming ``a.…``/``b.…`` paths.
    """
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"connect: {name} must be an nn.Module, got {type(m).__name__}")
    pairs_in = list(links.items()) if isinstance(links, Mapping) else list(links)
    if not pairs_in:
        raise ValueError("connect needs at least one link {'path in A': 'path in B'}")
    pairs = [
        (
            _link_path(a, model_a, "a", "link source (in model_a)"),
            _link_path(b, model_b, "b", "link target (in model_b)"),
        )
        for a, b in pairs_in
    ]
    if example is None:
        raise ValueError(
            "connect needs example=<an input>: a tensor for both models, or a pair "
            "(x_a, x_b); one forward pass finds the shapes at the linked points"
        )
    net = Connected(
        copy.deepcopy(model_a),
        copy.deepcopy(model_b),
        freeze_a=freeze_a,
        return_a=return_a,
        b_input=b_input,
    )
    net.training = model_b.training
    pair = isinstance(example, tuple | list) and len(example) == 2 and b_input == "input"
    run = (lambda: net(example[0], example[1])) if pair else (lambda: net(example))
    net._graft(pairs, run, merge=merge, shortcut="auto", zero_init=zero_init, layout=layout)
    return net
