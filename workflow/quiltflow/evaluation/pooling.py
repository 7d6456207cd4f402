"""Rule pool_runs: every fold's and seed's test predictions of one model, and pooled metrics.

With k-fold cross-validation each image is tested once per seed (in the run of its fold); the
pooled table is the out-of-fold predictions of every seed, with ``fold`` and ``seed`` columns.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map, sha256_file, write_json
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, read_task
from quiltflow.dag.pretraining import pooled_description
from quiltflow.evaluation.metrics import compute_metrics
from quiltflow.records.metrics_document import (
    build_metrics_document,
    copy_provenance,
    document_task,
    load_metrics_document,
)
from quiltflow.records.predictions import read_predictions, write_predictions

log = logging.getLogger("quiltflow.evaluation.pooling")


# The headline metrics of one run in ``cv.runs``, by the document's task.
RUN_SUMMARY_KEYS = {
    MULTICLASS: ("accuracy", "balanced_accuracy", "f1_macro"),
    MULTILABEL: ("map_macro", "auc_macro", "f1_macro", "top1_in_labels"),
}


def run_summary(document: dict, fold: int, seed: int) -> dict:
    """One run's entry of the metrics document's ``cv.runs`` (keys by ``task``; absent = multiclass)."""
    metrics = document["metrics"]
    keys = RUN_SUMMARY_KEYS[document_task(document)]
    return {"fold": int(fold), "seed": int(seed), "n_test": int(metrics["n_test"]), **{k: metrics[k] for k in keys}}


def check_out_of_fold(predictions: pd.DataFrame, folds: pd.DataFrame, seeds: Sequence[int]) -> None:
    """Each image is tested at most once per seed, in the run of its own fold; every seed ran.
    Video-level predictions (bag models: an ``n_frames`` column, ``image_id`` = the video) are
    checked by video."""
    key = "group" if "n_frames" in predictions.columns else "image_id"
    fold_of = dict(zip(folds[key], folds["fold"]))
    for seed in seeds:
        tested = predictions[predictions["seed"] == seed]
        if tested.empty:
            raise UserError(f"pool_runs: no predictions for seed {seed}")
        if not tested["image_id"].is_unique:
            raise UserError(
                f"pool_runs: image {tested['image_id'][tested['image_id'].duplicated()].iloc[0]} tested twice"
            )
        wrong = [i for i, f in zip(tested["image_id"], tested["fold"]) if fold_of.get(i) != f]
        if wrong:
            raise UserError(f"pool_runs: image {wrong[0]} was tested outside its fold ({fold_of.get(wrong[0])})")


def pool_runs(
    prediction_paths: Sequence[str],
    metrics_paths: Sequence[str],
    *,
    label_map_path: str,
    folds_path: str,
    predictions_out: str,
    metrics_out: str,
    model: str,
    folds: int,
    seeds: Sequence[int],
    top_k: int,
) -> dict:
    """Concatenate the runs' predictions, check they are out of fold, write pooled metrics."""
    class_names = read_label_map(label_map_path)
    task = read_task(label_map_path)
    frames = [read_predictions(path) for path in prediction_paths]
    predictions = pd.concat(frames, ignore_index=True)
    check_out_of_fold(predictions, pd.read_parquet(folds_path), seeds)
    documents = [load_metrics_document(p) for p in metrics_paths]
    stale = [p for p, doc in zip(metrics_paths, documents) if document_task(doc) != task]
    if stale:
        raise UserError(f"pool_runs: {stale[0]} is not a {task} evaluation (label map task); re-run evaluate_model")
    runs = [run_summary(doc, frame["fold"].iloc[0], frame["seed"].iloc[0]) for doc, frame in zip(documents, frames)]
    skipped: Counter = Counter()
    for doc in documents:
        skipped.update(doc["dataset"]["skipped_by_reason"])
    document = build_metrics_document(
        model=model,
        architecture=documents[0]["architecture"],
        weights=pooled_description(
            [doc["weights"] for doc in documents], [doc.get("pretraining") for doc in documents]
        ),
        dataset_sha256=sha256_file(folds_path),
        train_seconds=sum(doc["timing"]["train_seconds"] or 0.0 for doc in documents),
        eval_seconds=sum(doc["timing"]["eval_seconds"] for doc in documents),
        metrics=compute_metrics(predictions, class_names, top_k=int(top_k), task=task),
        test_manifest=str(Path(folds_path)),
        n_manifest=sum(doc["dataset"]["n_manifest"] for doc in documents),
        skipped_by_reason=dict(skipped),
        device=documents[0]["timing"]["device"],
        task=task,
        unit=documents[0].get("unit"),
    )
    document["cv"] = {"folds": int(folds), "seeds": [int(s) for s in seeds], "runs": runs}
    copy_provenance(document, documents)
    tta = {doc.get("tta") for doc in documents}
    if len(tta) > 1:
        raise UserError(f"pool_runs: {model}: runs evaluated with and without test-time augmentation")
    if tta != {None}:
        document["tta"] = tta.pop()
    write_predictions(predictions, predictions_out, class_names)
    write_json(document, metrics_out)
    log.info("%s: pooled %d predictions of %d runs", model, len(predictions), len(runs))
    return document
