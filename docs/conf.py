"""Sphinx configuration for skipkit's docs: the guides (Markdown, via MyST) and an API reference
generated from the docstrings by autodoc. Built by ``make docs`` into ``site/``."""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
from pathlib import Path

from sphinx.application import Sphinx

# The reference documents the source tree, not whichever skipkit happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# skipkit.keras needs a backend before Keras is imported; torch is always there with the docs extra.
os.environ.setdefault("KERAS_BACKEND", "torch")

project = "skipkit"
author = "skipkit contributors"
copyright = "skipkit contributors, MIT licence"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# Google-style sections ("Args:", "Returns:"); the rest of the docstrings is reStructuredText.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# The pages are module-level automodule directives: autodoc documents every name in a module's
# __all__ (also one defined in a private module), so a name added in any branch appears with no
# edit to the pages.
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_class_signature = "separated"
autodoc_inherit_docstrings = False  # nn.Module's forward/extra_repr docs are not ours
myst_heading_anchors = 3

html_theme = "furo"
html_title = "skipkit"


def _add_submodules(app: Sphinx, docname: str, source: list[str]) -> None:
    """Append a section per submodule that a package lists in its ``__all__`` (``skipkit.models``
    lists ``resnet``, ``unet``, …), so a model module added in any branch gets its page section
    with no edit here. Names the package re-exports stay on the package's own section (autodoc
    would otherwise describe the same class twice)."""
    if not docname.startswith("api/"):
        return
    match = re.search(r"^\.\. automodule:: (\S+)$", source[0], re.M)
    if match is None or match.group(1) == "skipkit":  # skipkit's subpackages have their own pages
        return
    package = importlib.import_module(match.group(1))
    for name in getattr(package, "__all__", []):
        sub = getattr(package, name)
        if not isinstance(sub, types.ModuleType) or sub.__name__ != f"{package.__name__}.{name}":
            continue
        shown = sorted(n for n in getattr(sub, "__all__", []) if n in package.__all__)
        exclude = f"   :exclude-members: {', '.join(shown)}\n" if shown else ""
        source[0] += f"\n## {sub.__name__}\n\n```{{eval-rst}}\n.. automodule:: {sub.__name__}\n"
        source[0] += f"{exclude}```\n"


def setup(app: Sphinx) -> None:
    app.connect("source-read", _add_submodules)
