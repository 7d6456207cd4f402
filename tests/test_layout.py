"""The package's house rules: subpackages by job, imports only downward, no circle, a light DAG build.

``core <- dag <- records <- data <- models <- evaluation``: a module may import its own
subpackage and those to its left; ``compare`` imports only ``records`` and ``core`` (so the
comparison never loads TensorFlow, by structure). Every import counts, lazy ones too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from quiltflow.dag.codehash import PACKAGE_DIR
from workflow_runner import REPO

ORDER = ("core", "dag", "records", "data", "models", "evaluation")
ALLOWED = {name: set(ORDER[: i + 1]) for i, name in enumerate(ORDER)} | {"compare": {"core", "records", "compare"}}
HEAVY = ("numpy", "pandas", "pyarrow", "PIL", "sklearn", "tensorflow", "keras")


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path) -> set[str]:
    """quiltflow modules (package-relative) a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "quiltflow":  # from quiltflow import x
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quiltflow."):
            found.add(node.module.removeprefix("quiltflow."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("quiltflow.") for a in node.names if a.name.startswith("quiltflow.")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_every_module_lives_in_a_subpackage_of_the_layout() -> None:
    top = {name.split(".")[0] for name in graph() if name}
    assert top <= set(ALLOWED), top - set(ALLOWED)


def test_imports_run_only_downward() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if module and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert not wrong, wrong


def test_no_import_circle() -> None:
    edges = {module: {t for t in targets if t != module} for module, targets in graph().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_dag_build_loads_no_numerics_or_images() -> None:
    """What common.smk imports while Snakemake builds the DAG stays light (no numpy, PIL, TF)."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    modules = sorted(set(re.findall(r"^from (quiltflow\.[\w.]+) import", common, re.M)))
    assert modules
    code = (
        f"import sys\nsys.path.insert(0, {str(REPO / 'workflow')!r})\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", (modules, out.stdout[-2000:])


def test_the_layout_test_catches_a_wrong_way_import(tmp_path, monkeypatch) -> None:
    """The checks above can fail: an upward import and a circle in a scratch package are found."""
    package = tmp_path / "quiltflow"
    for name, text in {
        "core/__init__.py": "",
        "core/a.py": "from quiltflow.models.b import x\n",
        "models/__init__.py": "",
        "models/b.py": "def f():\n    from quiltflow.core.a import y\n",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_DIR", package)
    import pytest

    with pytest.raises(AssertionError, match="core.a imports models.b"):
        test_imports_run_only_downward()
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()


def test_no_module_imports_another_s_private_name() -> None:
    """A name shared between modules is public: a leading underscore means "this module only"."""
    private = [
        f"{module_name(path)} imports {node.module}.{alias.name}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quiltflow")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not private, private
