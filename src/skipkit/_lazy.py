"""The one place where skipkit imports a module when a function runs instead of at import.

Everything else imports at module level (``tests/test_layering.py`` enforces it). A deferred
import is used for one of three reasons, and only these:

1. **Start-up time of the command line.** ``skipkit --help`` and every ``skipkit CMD --help``
   import no torch: the parser modules (:mod:`skipkit.cli`, ``skipkit._cli*``) import only
   the standard library, and the handler of a command (``"module:function"`` in
   :data:`skipkit.cli.HANDLERS`) is loaded when that command runs. ``--device cuda`` imports
   torch to check for a GPU only when a GPU is asked for; ``--version`` reads the package
   metadata only when asked.
2. **Heavy dependencies that a few functions need.** matplotlib (about 0.7 s to import) is
   loaded by the functions that draw (:mod:`skipkit.diagnostics.plot`,
   :mod:`skipkit.experiments.report`), and mnist1d (about 1.4 s, it pulls in scipy) only to
   build the MNIST-1D cache once, so that ``import skipkit.diagnostics`` and
   ``skipkit.data`` stay fast. Both are in the ``torch`` extra.
3. **Optional dependencies in no extra**: torchvision, for ``download=True`` of CIFAR.

The package's other lazy place is the PEP 562 table ``_LAZY`` of ``skipkit/__init__.py``,
which keeps ``import skipkit`` torch-free.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["import_optional", "load"]


def load(target: str) -> Any:
    """The module ``target`` (``"pkg.mod"``), or one of its attributes (``"pkg.mod:name"``).

    Raises:
        ModuleNotFoundError: the module is not installed (``exc.name`` says which).
    """
    name, _, attr = target.partition(":")
    module = importlib.import_module(name)
    return getattr(module, attr) if attr else module


def import_optional(name: str, *, extra: str = "torch", purpose: str) -> ModuleType:
    """The module ``name``, or an ``ImportError`` that names what needs it and the fix.

    Args:
        name: a dotted module name, e.g. ``"matplotlib.figure"``.
        extra: the pip extra of skipkit that installs it.
        purpose: what needs it, for the message (e.g. ``"plotting"``).
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        package = name.split(".", 1)[0]
        raise ImportError(
            f"{purpose} needs {package}, which cannot be imported ({exc}); install it with "
            f"pip install 'skipkit[{extra}]'"
        ) from exc
