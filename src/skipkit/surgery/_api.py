"""The wrapped model's API through a surgery wrapper, and what surgery refuses up front.

:func:`pass_through` gives ``net.<name>`` from the wrapped model when the wrapper has no such
attribute; a method reached so runs with the skips (see :mod:`skipkit.surgery.wrapper`).
Activation checkpointing and torch.fx operation names are refused with the reason.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from skipkit.surgery import _paths
from skipkit.surgery._fx import operation_names
from skipkit.surgery._paths import show

if TYPE_CHECKING:
    from skipkit.surgery.wrapper import SurgeryModule

log = logging.getLogger(__name__)


def pass_through(net: SurgeryModule, model: nn.Module | None, name: str) -> Any:
    """``model.<name>``, with its methods run inside the wrapper's skips."""
    if model is None:
        raise AttributeError(f"{type(net).__name__} has no attribute {name!r}")
    try:
        value = getattr(model, name)
    except AttributeError:
        raise AttributeError(
            f"neither {type(net).__name__} nor the model it wraps ({type(model).__name__}) "
            f"has an attribute {name!r}"
        ) from None
    if name in _ENABLES_CHECKPOINTING:
        return functools.partial(_refuse_checkpointing, name)
    if not inspect.ismethod(value) or value.__self__ is not model:
        return value
    if name == "save_pretrained":
        log.warning(
            "save_pretrained saves the wrapped %s only; the %d added skip(s) are in "
            "net.skips: save net.state_dict() (or net.skips.state_dict()) for them",
            type(model).__name__,
            len(net.skips),
        )
        return value
    return _loose_method(net, value)


def _loose_method(net: SurgeryModule, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        # Submodules the method calls directly join as in a pass; each call of the model
        # itself (generate's loop) is still a pass of its own.
        net._loose += 1
        try:
            return method(*args, **kwargs)
        finally:
            net._loose -= 1
            if net._loose == 0 and net._depth == 0:
                net._begin()

    return run


# Model methods that turn on activation checkpointing, which recomputes dst in the backward
# pass without src's output.
_ENABLES_CHECKPOINTING = (
    "set_grad_checkpointing",  # timm
    "gradient_checkpointing_enable",  # Hugging Face
    "activation_checkpointing_enable",  # Hugging Face, newer name
)


def check_not_an_operation(host: nn.Module, path: str, what: str) -> None:
    """A torch.fx operation name (``"layer1.0.add"``, as :func:`taps` takes) gets its own error."""
    if not isinstance(path, str) or path in _paths.module_paths(host):
        return
    ops = operation_names(host)
    if path not in ops:
        return
    scope = path.rsplit(".", 1)[0] if "." in path else ""
    raise ValueError(
        f"{what} {path!r} is an operation in the forward of {show(scope)} (a torch.fx name), "
        "not a submodule: operation names work in taps() only, while add_skip joins module "
        f"outputs with hooks. Fix: pass a submodule path, e.g. the module whose output it is "
        f"({show(scope)} when the operation ends its forward)"
    )


def checkpointing_error(host: nn.Module) -> str | None:
    """Why ``host`` cannot carry added skips while activation checkpointing is on, if it is."""
    on = [
        path or "<root>"
        for path, m in host.named_modules()
        if getattr(m, "grad_checkpointing", False) is True
        or getattr(m, "gradient_checkpointing", False) is True
    ]
    if not on:
        return None
    return (
        f"activation checkpointing is on in {type(host).__name__} (at {', '.join(on[:3])}): "
        "it recomputes modules in the backward pass (and may call blocks around their "
        "parents) without the outputs an added skip joins. Fix: turn it off (timm: "
        "model.set_grad_checkpointing(False); Hugging Face: model.gradient_checkpointing_disable())"
    )


def check_no_checkpointing(host: nn.Module) -> None:
    why = checkpointing_error(host)
    if why is not None:
        raise ValueError(why)


def _refuse_checkpointing(name: str, *args: Any, **kwargs: Any) -> None:
    enable = args[0] if args else kwargs.get("enable", True)
    if name == "set_grad_checkpointing" and not enable:
        return
    raise ValueError(
        f"{name}: activation checkpointing recomputes modules in the backward pass, without "
        "the outputs an added skip joins, so a model with added skips cannot use it. Fix: "
        "train without checkpointing, or add the skips as modules of the model (skipkit."
        "Residual) instead of with add_skip"
    )
