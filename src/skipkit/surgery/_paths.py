"""Module paths: resolving them with "did you mean" errors, and one probing forward pass that
records, per path, how often the module ran, in which order it finished, and its output, and
where the channels of the layers that ran are (the layouts of the tensors it saw)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from skipkit.shapes import Layout, close_matches


def show(path: str) -> str:
    """``'layer1'`` → ``"'layer1'"``; the root (``''``) → ``'<root>'``."""
    return repr(path) if path else "<root>"


def module_paths(root: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by every path (a module registered twice appears under both)."""
    return dict(root.named_modules(remove_duplicate=False))


_LIST_ALL = 24  # models with at most this many paths list them all in an unknown-path error


def unknown_path_error(
    path: str, root: nn.Module, *, what: str, extra: Iterable[str] = ()
) -> ValueError:
    """``ValueError`` naming the path, the model and the nearest existing paths."""
    modules = module_paths(root)
    names = [n for n in modules if n] + list(extra)
    hint = [repr(n) for n in close_matches(path, names)]
    tail = path.rsplit(".", 1)[-1]
    if not hint:  # a wrong prefix: match on the last component
        hint = [repr(n) for n in names if n.rsplit(".", 1)[-1] == tail][:3]
    if not hint:  # a class name where nn.Sequential wants an index ("relu" for "1")
        by_type = [(n, type(m).__name__) for n, m in modules.items() if n]
        hint = [f"{n!r} ({t})" for n, t in by_type if t.lower() == tail.lower()][:3]
    did_you_mean = f" Did you mean {', '.join(hint)}?" if hint else ""
    if len(names) <= _LIST_ALL:  # a small model: every choice fits in the message
        listing = f"(its submodules: {', '.join(map(repr, names))})"
    else:
        listing = "(list the paths with [name for name, _ in model.named_modules()])"
    return ValueError(
        f"{what} {path!r} is not a submodule of {type(root).__name__}.{did_you_mean} {listing}"
    )


def resolve(root: nn.Module, path: str, *, what: str) -> nn.Module:
    """The submodule at ``path`` (``''`` is ``root`` itself)."""
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a module path (a str), got {type(path).__name__}")
    found = module_paths(root).get(path)
    if found is None:
        raise unknown_path_error(path, root, what=what)
    return found


def path_of(root: nn.Module, module: nn.Module, *, what: str) -> str:
    """The path of ``module`` inside ``root`` (for callers that pass modules, not paths)."""
    for name, m in root.named_modules():
        if m is module:
            return name
    raise ValueError(
        f"{what} {type(module).__name__} is not a submodule of {type(root).__name__}; pass it "
        "as a path string"
    )


def call(module: nn.Module, inputs: Any) -> Any:
    """``module(x)``, ``module(*x)`` for a tuple, ``module(**x)`` for a mapping."""
    if isinstance(inputs, tuple):
        return module(*inputs)
    if isinstance(inputs, Mapping):
        return module(**inputs)
    return module(inputs)


def first_tensor(value: Any, *, path: str, role: str) -> torch.Tensor:
    """The tensor a skip uses: the output itself, or the first item of a tuple/list (RNNs
    return ``(output, state)``)."""
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(
        f"{role} {show(path)} returns {type(value).__name__}; a skip needs a tensor (or a "
        "tuple whose first item is one). Fix: pick a submodule that returns a tensor"
    )


def version_of(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter, or ``None`` where there is none to read
    (inference-mode tensors; inside torch.compile, where functionalization covers it)."""
    if torch.compiler.is_compiling() or t.is_inference():
        return None
    return t._version


@dataclasses.dataclass
class Seen:
    """What the probe saw of one path."""

    calls: int = 0
    finished: int = -1  # position among all recorded completions (first call)
    output: Any = None
    version: int | None = None  # the output's version counter when the module finished
    versions_then: dict[str, int | None] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def eval_no_grad(module: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm statistics untouched, no dropout) without autograd; the modes are
    restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A layer with a channel count that ran in the probe: where it is and what it gave."""

    path: str
    channels: int
    shape: tuple[int, ...]


_CHANNEL_ATTRS = ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim")


def channel_count(module: nn.Module) -> int | None:
    """The channels / features a leaf layer gives (Conv, Linear, norms, Embedding), if it says."""
    if next(module.children(), None) is not None:
        return None
    for attr in _CHANNEL_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)  # LayerNorm and its subclasses
    if isinstance(shape, tuple | list) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    return None


def observed_layout(path: str, shape: tuple[int, ...], leaves: list[Leaf]) -> Layout | None:
    """Where the channels of a tensor of ``shape``, the output of ``path``, are.

    Read from the tensors, not the module classes: the last layer inside ``path`` with a
    channel count ``C`` tells which end of ``shape`` holds ``C`` (timm's ConvNeXt runs its
    Linear layers and a ``LayerNorm`` subclass on an NHWC view, but its stages give NCHW).
    ``None`` for vectors, or when no layer says (``C`` at both ends or neither).
    """
    if len(shape) < 3:
        return None
    inside = [leaf for leaf in leaves if not path or leaf.path.startswith(path + ".")]
    inside += [leaf for leaf in leaves if leaf.path == path]
    for leaf in reversed(inside):
        first, last = shape[1] == leaf.channels, shape[-1] == leaf.channels
        if first != last:
            return "NC" if first else "NLC"
    return None


def probe(
    root: nn.Module,
    paths: Iterable[str],
    run: Callable[[], Any],
    *,
    owner: nn.Module,
    leaves: list[Leaf] | None = None,
) -> dict[str, Seen]:
    """Run ``run()`` once with hooks on ``paths`` of ``root``, ``owner`` (the module that
    ``run`` calls, containing ``root``) in eval mode and without autograd.

    The hooks go after any existing ones, so they see outputs as the rest of the model does.
    At each completion the version counters of earlier outputs are noted: a change means a
    later layer modified that output in place. With ``leaves``, every layer with a channel
    count that runs is appended to it, in the order they finish (for :func:`observed_layout`).
    """
    modules = module_paths(root)
    seen = {p: Seen() for p in paths}
    counter = [0]

    def record(path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            s = seen[path]
            s.calls += 1
            if s.calls > 1:
                return
            s.finished, counter[0] = counter[0], counter[0] + 1
            s.output = output
            t = output[0] if isinstance(output, tuple | list) and output else output
            if isinstance(t, torch.Tensor):
                s.version = version_of(t)
            for other, o in seen.items():
                ot = o.output[0] if isinstance(o.output, tuple | list) else o.output
                if other != path and isinstance(ot, torch.Tensor):
                    s.versions_then[other] = version_of(ot)

        return hook

    def note(path: str, channels: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if leaves is not None and isinstance(output, torch.Tensor):
                leaves.append(Leaf(path, channels, tuple(output.shape)))

        return hook

    handles = []
    try:
        for p in dict.fromkeys(paths):
            handles.append(modules[p].register_forward_hook(record(p)))
        if leaves is not None:
            for p, m in root.named_modules():
                c = channel_count(m)
                if c is not None:
                    handles.append(m.register_forward_hook(note(p, c)))
        with eval_no_grad(owner):
            run()
    finally:
        for h in handles:
            h.remove()
    return seen
