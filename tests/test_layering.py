"""The import graph is in the open: module-level imports, deferred ones in one documented place.

A function-local import hides a dependency (and, often, a cycle) from a reader; skipkit defers
an import only for start-up time or an optional dependency, and then through
:mod:`skipkit._lazy` (see its docstring) or the PEP 562 table of ``skipkit/__init__.py``.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

import skipkit
from skipkit import cli
from skipkit._lazy import import_optional, load

SRC = Path(skipkit.__file__).resolve().parent

DYNAMIC_IMPORTS_ALLOWED = {"_lazy.py", "__init__.py"}  # the documented places


def _modules() -> list[tuple[str, ast.Module]]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the walk found the package
    return [(p.relative_to(SRC).as_posix(), ast.parse(p.read_text(), str(p))) for p in files]


def _nested_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports inside a function, a lambda or a class body (module-level ``if``/``try`` is
    fine: ``if TYPE_CHECKING:``, a platform guard)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom) and nested:
                found.append(child)
            scope = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            walk(child, nested or scope or isinstance(child, ast.Lambda))

    walk(tree, False)
    return found


def test_no_function_local_imports() -> None:
    bad = [
        f"{path}:{node.lineno}: {ast.unparse(node)}"
        for path, tree in _modules()
        for node in _nested_imports(tree)
    ]
    assert bad == [], "import at module level, or defer it through skipkit._lazy:\n" + "\n".join(
        bad
    )


def test_the_checker_sees_local_imports() -> None:
    tree = ast.parse("import os\nif os:\n    import sys\ndef f():\n    import json\n")
    assert [ast.unparse(n) for n in _nested_imports(tree)] == ["import json"]


def _dynamic_imports(tree: ast.Module) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__", "spec_from_file_location"):
                calls.append(node)
    return calls


def test_dynamic_imports_only_in_the_documented_places() -> None:
    bad = [
        f"{path}:{call.lineno}: {ast.unparse(call)}"
        for path, tree in _modules()
        if Path(path).name not in DYNAMIC_IMPORTS_ALLOWED or "/" in path
        for call in _dynamic_imports(tree)
    ]
    assert bad == []


def _module_name(path: str) -> str:
    parts = ["skipkit", *Path(path).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_owner(target: str) -> str | None:
    """The module or package that owns the first private part of ``target``, if any."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_no_private_imports_across_subpackages() -> None:
    # a private module or name may be imported from inside the package or module that owns
    # it (skipkit._io by all of skipkit, skipkit.models._registry by skipkit.models.*)
    bad = []
    for path, tree in _modules():
        here = _module_name(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                owner = _private_owner(target)
                if owner is not None and owner.startswith("skipkit"):
                    if not (here == owner or here.startswith(owner + ".")):
                        bad.append(f"{path}:{node.lineno}: {target}")
    assert bad == []


def test_every_command_has_a_loadable_handler() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli.HANDLERS)
    for command, target in cli.HANDLERS.items():
        assert callable(load(target)), command
        assert sub.choices[command].get_default("func") is None, command  # the table decides


def test_import_optional_names_the_extra() -> None:
    assert import_optional("json", purpose="reading") is load("json")
    with pytest.raises(ImportError, match=r"plotting needs no_such_pkg_x.*skipkit\[torch\]"):
        import_optional("no_such_pkg_x.figure", purpose="plotting")
