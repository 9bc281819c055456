"""A stage's code identity: a hash of the syntax trees of its module and of every ``factory`` module that
computes part of its output, found by following imports (:func:`code_fingerprint`). It is derived, not written
by hand, because a hand-kept version number is what went stale before.

A module that cannot change any stage's output (storage, messages, network checks, the recipe parser whose values
the plan already holds, orchestration, decisions made after the stages, the CLI and reporting) says so in itself,
with a top-level ``CHANGES_NO_RESULT = True`` (:func:`changes_no_result`). Those modules are neither hashed nor
followed, so moving or editing them reruns nothing. Docstrings, the messages of raised exceptions and the text of
console calls are left out of the trees, so rewording a message or the report never reruns a stage.
tests/test_code_identity.py edits both kinds of module and fails when an edit moves a key it must not or leaves
one it must move, and when a module neither declares itself nor is covered by any stage.
"""

from __future__ import annotations

import ast
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from factory.hashing import hash_config

CHANGES_NO_RESULT = True

DECLARATION = "CHANGES_NO_RESULT"
"""The top-level name a module assigns ``True`` to say that no stage result depends on its code."""


@cache
def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions ('absent' when not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


_PACKAGE_DIR = Path(__file__).resolve().parent


def declares_no_result(path: Path) -> bool:
    """Whether the module in ``path`` assigns ``True`` to :data:`DECLARATION` at its top level."""
    return _declares_no_result(path.read_text(), str(path))


@cache
def _declares_no_result(source: str, filename: str) -> bool:
    for node in ast.parse(source, filename=filename).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == DECLARATION for t in node.targets):
            return isinstance(node.value, ast.Constant) and node.value.value is True
    return False


def changes_no_result(module: str, package_dir: Path | None = None) -> bool:
    """Whether ``module`` declares :data:`DECLARATION` in itself (a package's ``__init__`` speaks for itself only)."""
    path = _source_file(module, package_dir or _PACKAGE_DIR)
    return path is not None and declares_no_result(path)


def _source_file(module: str, package_dir: Path) -> Path | None:
    """The file of a ``factory`` module, found without importing it (None for names that are not modules)."""
    base = package_dir.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def factory_imports(tree: ast.Module, module: str, is_package: bool, package_dir: Path | None = None) -> set[str]:
    """``factory`` modules imported anywhere in ``tree`` (top level or inside functions)."""
    package_dir = package_dir or _PACKAGE_DIR
    package = module if is_package else module.rsplit(".", 1)[0]
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                 for n in ast.walk(node)}  # imports for annotations only: not code the stage runs
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from factory import data` imports a module
    return {name for name in found if name.split(".")[0] == "factory" and _source_file(name, package_dir)}


class _WhatComputes(ast.NodeTransformer):
    """A syntax tree without what cannot change a result: docstrings (any string statement, removed, so adding one
    where there was none changes nothing either), the message of a raised exception (its type stays) and the text
    passed to :mod:`factory.console` (log lines, progress bars). The tree is hashed, never compiled."""

    def __init__(self, console_names: set[str]):
        self.console_names = console_names

    def visit_Expr(self, node: ast.Expr):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise):
        if isinstance(node.exc, ast.Call):
            node.exc = node.exc.func
        return node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in self.console_names:
            for text in ast.walk(node):
                if isinstance(text, ast.Constant) and isinstance(text.value, str):
                    text.value = ""
        return node


def _console_names(tree: ast.Module) -> set[str]:
    return {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == "factory.console" for a in node.names}


def computing_tree(tree: ast.Module) -> str:
    """The dump of ``tree`` as a code identity hashes it (:class:`_WhatComputes`; the tree is changed)."""
    return ast.dump(_WhatComputes(_console_names(tree)).visit(tree))


def code_modules(module: str, package_dir: Path | None = None) -> dict[str, str]:
    """The modules a code identity covers: ``module`` and every ``factory`` module it imports, transitively,
    except those that change no result (:func:`changes_no_result`); each with the hash of its tree as :func:`computing_tree` gives it."""
    package_dir = package_dir or _PACKAGE_DIR
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source_file(name, package_dir)
        imported, seen[name] = _imports_and_hash(path.read_text(), path, name, package_dir)
        todo += sorted(m for m in imported - set(seen) if not changes_no_result(m, package_dir))
    return seen


@cache
def _imports_and_hash(source: str, path: Path, module: str, package_dir: Path) -> tuple[frozenset[str], str]:
    """A module's ``factory`` imports and the hash of its computing tree, parsed once per source text."""
    tree = ast.parse(source, filename=str(path))
    imported = frozenset(factory_imports(tree, module, path.name == "__init__.py", package_dir))
    return imported, hash_config(computing_tree(tree))  # after the imports are read: it changes the tree


@cache
def code_fingerprint(module: str, package_dir: Path | None = None) -> str:
    """Hash of the code that computes ``module``'s stage outputs (:func:`code_modules`)."""
    return hash_config(sorted(code_modules(module, package_dir).items()))[:20]
