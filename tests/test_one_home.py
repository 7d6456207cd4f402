"""One home for each fact: the results layout, the image extensions and the TTA names are defined
once and asked for everywhere else."""

from __future__ import annotations

import ast
import re

from quiltflow.core import paths
from quiltflow.core.settings import schema_choices
from quiltflow.dag.codehash import PACKAGE_DIR
from quiltflow.evaluation.evaluate import TTA_VIEWS
from workflow_runner import REPO

RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def string_constants(path) -> list[str]:
    """String literals of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_results_paths_are_spelled_only_in_core_paths() -> None:
    spelled = {
        str(path.relative_to(PACKAGE_DIR)): [s for s in string_constants(path) if s.startswith("results/")]
        for path in PACKAGE_DIR.rglob("*.py")
    }
    assert {name for name, found in spelled.items() if found} == {"core/paths.py"}
    for rule_file in RULE_FILES:  # rules ask quiltflow.core.paths too (logs/ is not results)
        assert not re.findall(r"[\"']results/", rule_file.read_text()), rule_file.name


def test_fill_leaves_other_wildcards_for_snakemake() -> None:
    assert paths.fill(paths.METRICS, run="") == "results/metrics/{model}{variant}.json"
    assert paths.fill(paths.MODEL, model="cnn", run="/fold0-seed1") == "results/models/cnn/fold0-seed1/model.keras"


def test_image_extensions_are_defined_once() -> None:
    definitions = [
        path.relative_to(PACKAGE_DIR)
        for path in PACKAGE_DIR.rglob("*.py")
        if re.search(r"^IMAGE_EXTENSIONS\s*=", path.read_text(), re.M)
    ]
    assert [str(p) for p in definitions] == ["data/images.py"]


def test_tta_names_of_the_schema_are_the_code_s() -> None:
    """evaluation.tta's enum (the config schema) and the modes evaluation implements are one list."""
    assert set(schema_choices("evaluation", "tta")) == set(TTA_VIEWS)
    assert TTA_VIEWS["none"] == 1 and all(views > 1 for mode, views in TTA_VIEWS.items() if mode != "none")
