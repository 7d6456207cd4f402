"""Rule evaluate_bag_model: a bag model (unit video) on the test videos' cached frame features.

Writes the video-level predictions table (one row per test video: ``image_id`` = ``group`` = the
video, labels, probabilities, ``n_frames``, ``fold``, ``seed``), the attention table (one row per
test frame: ``image_id``, ``group``, ``fold``, ``seed``, ``attention``; a video's weights sum to 1)
and the metrics document with ``unit: video``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from quiltflow.core.architectures import VIDEO
from quiltflow.core.jsonio import read_label_map, write_json
from quiltflow.core.tasks import MULTILABEL, read_task
from quiltflow.evaluation.evaluate import as_probabilities, manifest_digest, path_list, read_train_info
from quiltflow.evaluation.metrics import compute_metrics
from quiltflow.evaluation.pooling import run_summary
from quiltflow.models.mil import Bags
from quiltflow.models.thresholds import ordered_thresholds
from quiltflow.records.attention import write_attention
from quiltflow.records.metrics_document import build_metrics_document, copy_provenance
from quiltflow.records.predictions import write_predictions

log = logging.getLogger("quiltflow.evaluation.bag_evaluate")


def video_predictions(bags: Bags, probs: np.ndarray, task: str, thresholds=None) -> pd.DataFrame:
    """One row per video (``image_id`` = ``group``: readers of frame tables read it too)."""
    table = {"image_id": bags.groups, "group": bags.groups}
    if task == MULTILABEL:
        cut = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, np.float64)
        table.update(
            true_label=bags.labels.argmax(axis=1).astype(np.int32),
            pred_label=probs.argmax(axis=1).astype(np.int32),
            true_multi_hot=list(bags.labels.astype(np.int8)),
            pred_multi_hot=list((probs >= cut).astype(np.int8)),
        )
    else:
        table.update(true_label=bags.labels.astype(np.int32), pred_label=probs.argmax(axis=1).astype(np.int32))
    table["probabilities"] = list(probs.astype(np.float32))
    table["n_frames"] = np.array([len(rows) for rows in bags.members], np.int32)
    return pd.DataFrame(table)


def attention_table(bags: Bags, attention: Sequence[np.ndarray]) -> pd.DataFrame:
    """One row per frame: its video and its attention weight within the video."""
    rows = np.concatenate(bags.members)
    return pd.DataFrame(
        {
            "image_id": bags.ids[rows],
            "group": np.repeat(bags.groups, [len(m) for m in bags.members]),
            "attention": np.concatenate(attention).astype(np.float32),
        }
    )


def _predict(model_path: str, bags: Bags, batch_size: int, task: str):
    import keras

    from quiltflow.models.mil import predict_bags

    model = keras.models.load_model(model_path, compile=False)
    start = time.perf_counter()
    probs, attention = predict_bags(model, bags, int(batch_size))
    return as_probabilities(probs, model.name, task), attention, time.perf_counter() - start


def evaluate_bag_model(
    *,
    model_path: str,
    features_paths: Sequence[str],
    manifest_path: Sequence[str],
    label_map_path: str,
    info_path: str,
    predictions_path: str,
    attention_path: str,
    metrics_path: str,
    model_name: str,
    top_k: int,
    batch_size: int,
    fold: int = 0,
    seed: int = 0,
    folds: int = 1,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Predict every test video from all its frames; write predictions, attention and metrics."""
    from quiltflow.models.train_mil import load_bags, read_groups

    class_names, task = read_label_map(label_map_path), read_task(label_map_path)
    info = read_train_info(info_path, model_name)
    groups = read_groups(path_list(manifest_path))
    bags = load_bags(path_list(features_paths), groups, image_size=image_size, weights=info.get("weights_source"))
    probs, attention, seconds = _predict(model_path, bags, batch_size, task)
    thresholds = None
    if task == MULTILABEL:
        thresholds = ordered_thresholds(info.get("thresholds"), class_names, f"train_info of {model_name}")
    run = {"fold": np.int32(fold), "seed": np.int32(seed)}
    predictions = video_predictions(bags, probs, task, thresholds).assign(**run)
    document = build_metrics_document(
        model=model_name,
        architecture=str(info.get("architecture", "unknown")),
        weights=str(info.get("weights", "unknown")),
        dataset_sha256=manifest_digest(manifest_path),
        train_seconds=info.get("train_seconds"),
        eval_seconds=seconds,
        metrics=compute_metrics(predictions, class_names, top_k=int(top_k), task=task),
        test_manifest=",".join(path_list(manifest_path)),
        n_manifest=len(bags),
        device=info.get("device"),
        task=task,
        unit=VIDEO,
    )
    document["cv"] = {"folds": int(folds), "seeds": [int(seed)], "runs": [run_summary(document, fold, seed)]}
    copy_provenance(document, [info])
    write_predictions(predictions, predictions_path, class_names)
    write_attention(attention_table(bags, attention).assign(**run), attention_path)
    write_json(document, metrics_path)
    log.info("%s: %d test videos (%d frames)", model_name, len(bags), len(bags.features))
    return document
