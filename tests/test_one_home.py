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


def test_pooled_weights_come_from_the_runs_records_not_their_text() -> None:
    from quiltflow.dag.pretraining import describe, pooled_description

    record = {"name": "simclr", "method": "simclr", "backbone": "resnet50", "pool": "train", "epochs_run": 2}
    records = [dict(record, pool_images=n, pool_buckets=[f"fold{k}a"]) for k, n in enumerate((320, 300, 310))]
    texts = [describe("simclr", r) for r in records]
    assert (
        pooled_description(texts, records)
        == "pretrained:simclr (simclr resnet50, 2 epochs on 300-320 train images per fold)"
    )
    assert pooled_description(texts[:1] * 3, records) == texts[0]  # one job for every run
    other = [*records[:2], dict(records[2], epochs_run=3)]
    assert pooled_description(texts, other) == f"{texts[0]} (+2 other)"
    assert pooled_description(texts, [None, *records[1:]]) == f"{texts[0]} (+2 other)"  # no record: no guess
