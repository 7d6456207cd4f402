"""The versioned metrics JSON of one model (``results/metrics/{model}.json``): build, validate, read.

Schema: ``workflow/schemas/metrics.schema.json``. No TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json
from quiltflow.core.paths import METRICS_SCHEMA
from quiltflow.core.tasks import MULTICLASS, MULTILABEL

METRICS_SCHEMA_VERSION = 1


SCHEMA_PATH = METRICS_SCHEMA
# Structured records of where a model's weights came from, as train_info.json holds them: a
# pretraining job's (quiltflow.dag.pretraining) or a published encoder's (quiltflow.dag.encoders).
PROVENANCE_KEYS = ("pretraining", "encoder")


def build_metrics_document(
    *,
    model: str,
    architecture: str,
    weights: str,
    dataset_sha256: str,
    train_seconds: float | None,
    eval_seconds: float,
    metrics: dict[str, Any],
    test_manifest: str | None = None,
    n_manifest: int | None = None,
    skipped_by_reason: dict[str, int] | None = None,
    device: str | None = None,
    task: str = MULTICLASS,
    unit: str | None = None,
) -> dict[str, Any]:
    """The versioned metrics JSON of one model (schema: workflow/schemas/metrics.schema.json).

    ``n_manifest`` and ``skipped_by_reason`` say how the test manifest's rows reconcile with
    ``metrics.n_test`` (images that could not be sharded are counted, not silently dropped).
    ``task`` (multiclass | multilabel) says which ``metrics`` block ``compute_metrics`` made.
    """
    document = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "task": task,
        "model": model,
        "architecture": architecture,
        "weights": weights,
        "dataset": {
            "test_manifest": test_manifest,
            "sha256": dataset_sha256,
            "n_manifest": int(n_manifest) if n_manifest is not None else int(metrics["n_test"]),
            "skipped_by_reason": {str(k): int(v) for k, v in (skipped_by_reason or {}).items()},
        },
        "timing": {
            "train_seconds": None if train_seconds is None else float(train_seconds),
            "eval_seconds": float(eval_seconds),
            "device": device,
        },
        "metrics": metrics,
    }
    if unit is not None:  # image: one prediction per frame; video: one per video (a bag model)
        document["unit"] = unit
    validate_metrics_document(document)
    return document


def copy_provenance(document: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """``document`` with each provenance record that ``records`` (train_info or metrics documents of
    one model's runs) all share, identically: an encoder is the same checkpoint in every fold,
    while per-fold pretraining differs and stays with each run's own document."""
    for key in PROVENANCE_KEYS:
        values = [record.get(key) for record in records]
        if values and values[0] and all(value == values[0] for value in values):
            document[key] = values[0]
    return document


def load_metrics_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def validate_metrics_document(document: dict[str, Any], *, source: str = "metrics document") -> None:
    """Check a metrics document against the JSON Schema and its internal counts."""
    import jsonschema  # only here: keeps `import quiltflow.evaluation.metrics` light for the pure metric functions

    validator = jsonschema.Draft202012Validator(load_metrics_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: len(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise UserError(f"{source}: key {where}: {err.message}")
    metrics = document["metrics"]
    k = metrics["n_classes"]
    if document_task(document) == MULTILABEL:
        if metrics["class_names"] != list(metrics["per_class"]) or len(metrics["class_names"]) != k:
            raise UserError(f"{source}: class_names/per_class do not match n_classes={k}")
    else:
        matrix = metrics["confusion_matrix"]
        if len(metrics["class_names"]) != k or len(matrix) != k or any(len(row) != k for row in matrix):
            raise UserError(f"{source}: class_names/confusion_matrix do not match n_classes={k}")
        if sum(map(sum, matrix)) != metrics["n_test"]:
            raise UserError(f"{source}: confusion matrix total != n_test={metrics['n_test']}")
    dataset = document["dataset"]
    skipped = sum(dataset["skipped_by_reason"].values())
    if dataset["n_manifest"] != metrics["n_test"] + skipped:
        raise UserError(
            f"{source}: n_manifest={dataset['n_manifest']} != n_test={metrics['n_test']} + skipped={skipped}"
        )


def document_task(document: dict[str, Any]) -> str:
    """The task of a metrics document (one written before multi-label has no ``task``: multiclass)."""
    return document.get("task", MULTICLASS)


def load_metrics_document(path: str | Path) -> dict[str, Any]:
    """Read and validate a metrics JSON (refuses other schema versions with a clear message)."""
    document = read_json(path, "metrics file")
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != METRICS_SCHEMA_VERSION:
        raise UserError(
            f"metrics file {path}: schema_version {version!r}, expected {METRICS_SCHEMA_VERSION} "
            "(re-run evaluate_model)"
        )
    validate_metrics_document(document, source=f"metrics file {path}")
    return document
