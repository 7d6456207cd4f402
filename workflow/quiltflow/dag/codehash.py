"""Code triggers computed from imports: a rule reruns when any quiltflow module its script uses changes.

Snakemake's own code trigger sees only a rule's script file. Each rule therefore gets a ``code``
param: a hash of every ``quiltflow`` module in the transitive closure of its script's imports, read
with ``ast`` (nothing is executed), so no hand-written list can miss a module. Standard library
only: the Snakefile calls this while it builds the DAG.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "quiltflow"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # workflow/quiltflow (not core.paths: stdlib only, no package import)


def _module_file(name: str, package_dir: Path) -> Path | None:
    """The source file of package module ``name`` (``""`` = the package itself; a subpackage is
    its ``__init__.py``), if it exists."""
    base = package_dir / name.replace(".", "/") if name else package_dir
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    path = base.with_suffix(".py")
    return path if name and path.is_file() else None


def _parents(name: str) -> list[str]:
    """The packages Python runs before module ``name``: ``""`` and every enclosing subpackage."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(len(parts))]


def _imported_modules(tree: ast.AST, current: str | None, package_dir: Path) -> set[str]:
    """Package-relative names of the quiltflow modules imported anywhere in ``tree``.

    ``current`` is the importing module's own name (None for a script outside the package),
    needed to resolve relative imports.
    """
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_base(node, current)
            if base is None:
                continue
            # `from quiltflow import shards` names a module; `from quiltflow.x import f` names f.
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                relative = name[len(PACKAGE) + 1 :]
                if _module_file(relative, package_dir) is not None:
                    found.add(relative)
    return found


def _absolute_base(node: ast.ImportFrom, current: str | None) -> str | None:
    if node.level == 0:
        return node.module
    if current is None:
        return None  # a relative import outside the package cannot reach it
    package = [PACKAGE, *current.split(".")[:-1]] if current else [PACKAGE]  # "" is the package
    parent = package[: len(package) - (node.level - 1)]
    return ".".join(parent + ([node.module] if node.module else []))


def _module_imports(name: str, package_dir: Path) -> frozenset[str]:
    path = _module_file(name, package_dir)
    stat = path.stat()
    return _parsed_imports(name, package_dir, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _parsed_imports(name: str, package_dir: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """Imports of one module file, parsed once per version of the file (every rule asks)."""
    path = _module_file(name, package_dir)
    return frozenset(_imported_modules(ast.parse(path.read_bytes(), filename=str(path)), name, package_dir))


def module_closure(script: str | Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Sorted package-relative names of every quiltflow module ``script`` uses, directly or not.

    The package's ``__init__`` (``""``) and each enclosing subpackage's are included: Python runs
    them before any submodule.
    """
    tree = ast.parse(Path(script).read_bytes(), filename=str(script))
    pending = list(_imported_modules(tree, None, package_dir))
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_module_imports(name, package_dir) - seen)
    # A package's __init__ runs before any of its modules: it is part of the closure.
    seen |= {parent for name in seen for parent in _parents(name)}
    return sorted(seen)


def code_version(script: str | Path, package_dir: Path = PACKAGE_DIR) -> str:
    """Short hash of the source of every quiltflow module in ``script``'s import closure."""
    digest = hashlib.sha256()
    for name in module_closure(script, package_dir):
        digest.update(name.encode() + b"\0")
        digest.update(_module_file(name, package_dir).read_bytes())
    return digest.hexdigest()[:16]
