"""Skips added to models that already exist: :func:`add_skip` and :func:`connect`.

::

    model:  x ── … ── src ── … ── dst ──merge── … ──> y
                       │              │
                       └── adapter ───┘        (AddedSkip: adapter + merge)

The model is deep-copied into a wrapper (:class:`~skipkit.surgery.wrapper.Grafted`, or
:class:`~skipkit.surgery.wrapper.Connected` for two models) whose forward hooks do the join;
see :mod:`skipkit.surgery.wrapper`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload

from torch import nn

from skipkit.merges import Merge
from skipkit.surgery import _paths
from skipkit.surgery._paths import call
from skipkit.surgery.wrapper import Connected, Grafted, SurgeryModule


def _example_run(module: nn.Module, example: Any) -> Any:
    return lambda: call(module, example)


_Wrapper = TypeVar("_Wrapper", bound=SurgeryModule)


# A wrapper gets one more skip and keeps its type; any other module becomes a Grafted.
@overload
def add_skip(  # type: ignore[overload-overlap]
    model: _Wrapper,
    src: str | nn.Module,
    dst: str | nn.Module,
    *,
    merge: str | Merge = ...,
    shortcut: str | nn.Module = ...,
    example: Any = ...,
    zero_init: bool = ...,
    layout: str | None = ...,
) -> _Wrapper: ...


@overload
def add_skip(
    model: nn.Module,
    src: str | nn.Module,
    dst: str | nn.Module,
    *,
    merge: str | Merge = ...,
    shortcut: str | nn.Module = ...,
    example: Any = ...,
    zero_init: bool = ...,
    layout: str | None = ...,
) -> Grafted: ...


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
        merge: a string of :mod:`skipkit.merges` (the same formula as in the core, with
            ``s`` = the adapter's output on src's, ``b`` = dst's output): ``"add"``
            (default), ``"concat"`` (reduced back to dst's width), ``"film"``,
            ``"tanh_gate"``, ``"rezero_skip"``, ``"layerscale_skip"``, ``"weighted"``; with
            ``zero_init=False`` also ``"mul"``, ``"gate"``, ``"rezero"``, ``"skipinit"``,
            ``"layerscale"``, which cannot start as dst's output. Or a :class:`skipkit.Merge`
            (see :mod:`skipkit.surgery.adapters` for what starts at zero).
        shortcut: ``"auto"`` (identity, 1×1 conv + BN with stride, Linear, resample, crop,
            global pool + Linear for maps into vectors), another kind of
            :func:`skipkit.plan_shortcut`, or an ``nn.Module`` mapping src's output to what
            the merge needs.
        example: an input for ``model`` (a tensor; a tuple of positional arguments; a dict
            of keyword arguments). Required: one forward pass finds the shapes and checks
            the order. It runs in eval mode without gradients.
        zero_init: start the adapter (or the merge's gate, scale or reduction) at zero, so
            the result computes exactly the original function at step 0 (ControlNet's zero
            convolutions) and then learns to use the skip.
        layout: ``"NC"`` / ``"NLC"`` / ``"NF"``; inferred from dst, src or the model.

    Returns:
        A :class:`Grafted` (or :class:`Connected`) module.

    Raises:
        ValueError: an unknown path (with close matches), ``src == dst``, a module that runs
            more than once per forward or not at all, ``dst`` running before ``src``, a merge
            that cannot start as dst's output with ``zero_init`` (naming the one that can),
            or no ``example``.
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
