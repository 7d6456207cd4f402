"""Rule evaluate_model: predict the test set with a saved model, then write predictions and metrics.

Only this module (not metrics/stats/compare) touches TensorFlow: the metrics are computed from the
saved predictions table so that they can be recomputed, and compared, without a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from quiltflow.core.architectures import IMAGE
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, read_label_map, sha256_file, write_json
from quiltflow.core.paths import TTA_ROW_SUFFIX
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, read_task
from quiltflow.evaluation.metrics import compute_metrics
from quiltflow.evaluation.pooling import run_summary
from quiltflow.models.thresholds import ordered_thresholds
from quiltflow.records.metrics_document import METRICS_SCHEMA_VERSION, build_metrics_document, copy_provenance
from quiltflow.records.predictions import write_predictions

__all__ = ["METRICS_SCHEMA_VERSION", "TTA_VIEWS", "dihedral_views", "predict", "evaluate_model"]

log = logging.getLogger("quiltflow.evaluation.evaluate")

# evaluation.tta (its names are the schema's enum, tests/test_tta.py ties them): views per test
# image whose probabilities are averaged; none = the image once, dihedral = its eight flips/rotations.
TTA_VIEWS = {"none": 1, "dihedral": 8}
# A sigmoid output is in [0, 1]; float noise beyond this says the outputs are not probabilities.
SIGMOID_TOLERANCE = 1e-6


def as_probabilities(outputs: np.ndarray, model_name: str, task: str = MULTICLASS) -> np.ndarray:
    """Model outputs as probabilities (evaluation and prediction on new images alike); logits
    (rows not summing to 1) get a softmax. Multi-label outputs are one independent probability per
    label, never softmaxed; values outside [0, 1] (beyond float noise) are a UserError: whether
    they are logits cannot be told, and every registered architecture ends in a sigmoid."""
    outputs = outputs.astype(np.float64)
    if task == MULTILABEL:
        bad = ~np.isfinite(outputs) | (outputs < -SIGMOID_TOLERANCE) | (outputs > 1 + SIGMOID_TOLERANCE)
        if bad.any():
            raise UserError(
                f"model {model_name}: outputs outside [0, 1] (e.g. {outputs[bad][0]:.4g}); "
                "a multi-label model must end in a sigmoid layer"
            )
        return np.clip(outputs, 0.0, 1.0)
    sums = outputs.sum(axis=1)
    if outputs.min(initial=0.0) >= 0 and np.all(np.abs(sums - 1.0) < 1e-3):
        return outputs
    log.warning("%s: outputs are not probabilities (no softmax layer?); applying softmax", model_name)
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _average_cells(
    ids: list[str], labels: np.ndarray, probs: np.ndarray, records_per_image: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One row per source image: the mean probability over its cells (grid framing). ``labels``:
    one class per record, or one multi-hot row per record."""
    keys = [row.tobytes() for row in labels] if labels.ndim == 2 else labels
    table = pd.DataFrame({"image_id": ids, "label": keys})
    counts = table.groupby("image_id", sort=False).size()
    wrong = counts[counts != records_per_image]
    if len(wrong):
        raise UserError(
            f"test dataset: image_id {wrong.index[0]} has {wrong.iloc[0]} cell records, expected {records_per_image}"
        )
    if (table.groupby("image_id", sort=False)["label"].nunique() > 1).any():
        raise UserError("test dataset: the cells of one image carry different labels")
    codes, order = pd.factorize(table["image_id"])  # first-seen order of the source images
    sums = np.zeros((len(order), probs.shape[1]))
    np.add.at(sums, codes, probs)
    first = np.unique(codes, return_index=True)[1]
    return list(order), labels[first], sums / records_per_image


def dihedral_views(images: Any) -> Any:
    """[B, S, S, C] square images -> [B * 8, S, S, C]: each image's eight dihedral views in turn
    (the flips and 90-degree rotations of ``data.dihedral_table``, identity first)."""
    import tensorflow as tf

    from quiltflow.models.pipeline import dihedral_table

    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    size = int(images.shape[1])
    if images.shape[2] != size:
        raise UserError(f"test-time augmentation needs square images, got {tuple(images.shape[1:3])}")
    pixels = tf.reshape(images, [shape[0], size * size, -1])
    views = tf.gather(pixels, tf.constant(dihedral_table(size)), axis=1)  # [B, 8, S*S, C]
    return tf.reshape(views, [shape[0] * 8, size, size, shape[3]])


def _predict_views(model: Any, images: Any, tta: bool) -> np.ndarray:
    """Model outputs [B, k], or with ``tta`` [B, 8, k]: one per dihedral view of each image."""
    if not tta:
        return np.asarray(model.predict_on_batch(images))
    out = np.asarray(model.predict_on_batch(dihedral_views(images)))
    return out.reshape(-1, 8, *out.shape[1:]) if out.ndim == 2 else out


def _predict_batches(
    model: Any, dataset: Any, num_classes: int, tta: bool = False
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(ids, label batches, output batches) of every batch of ``dataset``; with ``tta`` each output
    batch is [B, 8, k] (the eight dihedral views of each image)."""
    import tensorflow as tf

    name = getattr(model, "name", "model")
    ids: list[str] = []
    labels: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    for batch in dataset.prefetch(tf.data.AUTOTUNE):
        if len(batch) != 3:
            raise UserError("test dataset must yield (images, labels, ids): build it with with_ids=True")
        images, batch_labels, batch_ids = batch
        # predict_on_batch reuses one compiled predict function: no per-batch retracing or callbacks.
        out = _predict_views(model, images, tta)
        if out.ndim != 2 + tta or out.shape[-1] != num_classes:
            raise UserError(
                f"model {name}: output shape {tuple(out.shape)} does not match {num_classes} classes of the label map"
            )
        outputs.append(out)
        batch_labels = np.asarray(batch_labels)
        labels.append(batch_labels if batch_labels.ndim == 2 else batch_labels.reshape(-1))
        ids.extend(i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in np.asarray(batch_ids).reshape(-1))
    return ids, labels, outputs


def predict(
    model: Any,
    dataset: Any,
    class_names: Sequence[str],
    *,
    groups: Mapping[str, str] | None = None,
    records_per_image: int = 1,
    tta: str = "none",
    task: str = MULTICLASS,
    thresholds: Sequence[float] | None = None,
    primary: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Predict every batch of ``dataset`` (``(uint8 images, labels, string ids)``).

    Returns the predictions table of docs/interfaces.md. ``group`` comes from ``groups``
    (image_id -> leakage group, read from the test manifest); an id missing there is an error.
    Without ``groups`` the column is empty strings. With ``records_per_image`` > 1 (grid
    framing) the ids are source images' and each image's cell probabilities are averaged.
    ``tta="dihedral"``: each image's (cell's) probabilities are the mean over its eight dihedral
    views (test-time augmentation), before the cells are averaged. A multi-label ``task`` adds the
    true and the thresholded multi-hot (``thresholds``: per label, default 0.5) and takes
    ``true_label`` from ``primary`` (image_id -> first label; default: its first true label).
    """
    if tta not in TTA_VIEWS:
        raise UserError(f"config key evaluation.tta: {tta!r} is not one of {', '.join(TTA_VIEWS)}")
    ids, labels, outputs = _predict_batches(model, dataset, len(class_names), tta=TTA_VIEWS[tta] > 1)
    if not ids:
        raise UserError("test dataset is empty: nothing to evaluate")
    outputs = np.concatenate(outputs)
    probs = as_probabilities(outputs.reshape(-1, outputs.shape[-1]), getattr(model, "name", "model"), task)
    if TTA_VIEWS[tta] > 1:  # probabilities per view, then the mean over the views
        probs = probs.reshape(outputs.shape).mean(axis=1)
    true_labels = np.concatenate(labels).astype(np.int32)
    if records_per_image > 1:
        ids, true_labels, probs = _average_cells(ids, true_labels, probs, records_per_image)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise UserError(f"test dataset: image_id {dup} appears more than once")
    table = {"image_id": ids, "group": _group_column(ids, groups)}
    if task == MULTILABEL:
        table.update(_multilabel_columns(ids, true_labels, probs, thresholds, primary))
    else:
        table.update(true_label=true_labels, pred_label=probs.argmax(axis=1).astype(np.int32))
    table["probabilities"] = list(probs.astype(np.float32))
    return pd.DataFrame(table)


def _group_column(ids: list[str], groups: Mapping[str, str] | None) -> list[str]:
    if groups is None:
        return [""] * len(ids)
    missing = [i for i in ids if i not in groups]
    if missing:
        raise UserError(f"test manifest has no row for image_id {missing[0]} ({len(missing)} missing)")
    return [str(groups[i]) for i in ids]


def _multilabel_columns(ids, true_multi_hot, probs, thresholds, primary) -> dict[str, Any]:
    """The multi-label prediction columns (docs/interfaces.md): decisions at the thresholds."""
    thresholds = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, np.float64)
    if thresholds.shape != (probs.shape[1],):
        raise UserError(f"thresholds: {thresholds.size} values for {probs.shape[1]} labels")
    first = true_multi_hot.argmax(axis=1)
    true_label = first if primary is None else np.array([primary.get(i, f) for i, f in zip(ids, first)])
    return {
        "true_label": true_label.astype(np.int32),
        "pred_label": probs.argmax(axis=1).astype(np.int32),
        "true_multi_hot": list(true_multi_hot.astype(np.int8)),
        "pred_multi_hot": list((probs >= thresholds).astype(np.int8)),
    }


def _make_test_dataset(index_path: str, batch_size: int) -> Any:
    """The test TFRecords as ``(images, labels, ids)`` batches, in manifest order."""
    from quiltflow.models.pipeline import make_dataset  # TF reader, written by the data stage

    return make_dataset(index_path, batch_size, training=False, with_ids=True)


def _train_info(info_path: str, model_name: str) -> dict[str, Any]:
    info = read_json(info_path, "train_info")
    info_model = info.get("model")
    if info_model is not None and info_model != model_name:
        raise UserError(f"train_info {info_path}: key model is {info_model!r}, expected {model_name!r}")
    return info


Paths = str | Sequence[str]


def _paths(paths: Paths) -> list[str]:
    """One file, or a run's several test buckets."""
    return [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]


def _skipped_by_reason(test_index_paths: Paths) -> dict[str, int]:
    skipped: Counter = Counter()
    for path in _paths(test_index_paths):
        skipped.update(read_json(path, "test index").get("skipped_by_reason", {}))
    return {str(k): int(v) for k, v in sorted(skipped.items())}


def _test_groups(manifest_paths: Paths) -> tuple[pd.DataFrame, dict[str, str]]:
    """The test manifest(s) and the image id -> group (video) map."""
    parts = []
    for path in _paths(manifest_paths):
        names = pq.read_schema(path).names  # label_index: the primary label a multi-label run reports
        parts.append(pd.read_parquet(path, columns=[c for c in ("image_id", "group", "label_index") if c in names]))
    manifest = pd.concat(parts, ignore_index=True)
    groups = dict(zip(manifest["image_id"].astype(str), manifest["group"].astype(str)))
    if len(groups) != len(manifest):
        raise UserError(f"test manifest {manifest_paths}: image_id values are not unique")
    return manifest, groups


def _manifest_digest(manifest_paths: Paths) -> str:
    """SHA-256 of the one test manifest, or of the list of several manifests' digests."""
    paths = _paths(manifest_paths)
    if len(paths) == 1:
        return sha256_file(paths[0])
    return hashlib.sha256("".join(f"{sha256_file(p)}\n" for p in paths).encode()).hexdigest()


def _predict_test_split(
    model_path, test_index_path, batch_size, class_names, groups, tta="none", **targets
) -> tuple[pd.DataFrame, float]:
    """Predictions of the test split and their seconds; ``targets``: predict()'s task,
    thresholds and primary labels."""
    import keras

    import quiltflow.models.builders  # noqa: F401  (registers ResNet50Preprocess for deserialisation)

    model = keras.models.load_model(model_path, compile=False)
    dataset = _make_test_dataset(test_index_path, int(batch_size))
    start = time.perf_counter()
    records_per_image = int(read_json(_paths(test_index_path)[0], "test index").get("records_per_image", 1))
    predictions = predict(
        model, dataset, class_names, groups=groups, records_per_image=records_per_image, tta=tta, **targets
    )
    return predictions, time.perf_counter() - start


def _check_reconciled(manifest_path, test_index_path, n_manifest: int, n_predicted: int, n_skipped: int) -> None:
    """Every manifest row is either predicted or counted as skipped by the sharding stage."""
    if n_manifest != n_predicted + n_skipped:
        raise UserError(
            f"test manifest {manifest_path} has {n_manifest} rows but {n_predicted} were predicted "
            f"and {n_skipped} skipped in {test_index_path}: re-run shard_tfrecords/index_tfrecords"
        )


def _log_result(document: dict[str, Any]) -> None:
    metrics, seconds = document["metrics"], document["timing"]["eval_seconds"]
    headline = "map_macro" if document.get("task") == MULTILABEL else "accuracy"
    log.info(
        "%s: %d test images, %s %s, macro F1 %.4f, eval %.1f s",
        *(document["model"], metrics["n_test"], headline, metrics[headline], metrics["f1_macro"], seconds),
    )


def _targets(task: str, info: Mapping[str, Any], class_names: Sequence[str], manifest: pd.DataFrame) -> dict:
    """predict()'s multi-label arguments: the run's validation thresholds and primary labels."""
    if task != MULTILABEL:
        return {"task": task}
    thresholds = ordered_thresholds(info.get("thresholds"), class_names, f"train_info of {info.get('model')}")
    if "label_index" not in manifest:
        raise UserError("test manifest has no column label_index (re-run split_manifests)")
    primary = dict(zip(manifest["image_id"].astype(str), manifest["label_index"].astype(int)))
    return {"task": task, "thresholds": thresholds, "primary": primary}


def evaluate_model(
    *,
    model_path: str,
    test_index_path: Paths,
    manifest_path: Paths,
    label_map_path: str,
    info_path: str,
    predictions_path: str,
    metrics_path: str,
    model_name: str,
    top_k: int,
    batch_size: int,
    threads: int = 1,
    fold: int = 0,
    seed: int = 0,
    folds: int = 1,
    tta: str = "none",
) -> dict[str, Any]:
    """Predict the test split, write the predictions Parquet and the metrics JSON; return the JSON.
    ``test_index_path``/``manifest_path``: one bucket, or a run's test buckets; ``fold`` and ``seed``
    name the run (columns of the predictions). ``tta="dihedral"`` (rule evaluate_tta): test-time
    augmentation; the document's model is ``{model}+tta`` and its ``tta`` key says which."""
    from quiltflow.models.runtime import set_thread_pools

    set_thread_pools(max(1, int(threads)))  # before TensorFlow runs anything
    class_names, task = read_label_map(label_map_path), read_task(label_map_path)
    info = _train_info(info_path, model_name)
    skipped = _skipped_by_reason(test_index_path)
    manifest, groups = _test_groups(manifest_path)
    targets = _targets(task, info, class_names, manifest)
    predictions, eval_seconds = _predict_test_split(
        model_path, test_index_path, batch_size, class_names, groups, tta, **targets
    )
    _check_reconciled(manifest_path, test_index_path, len(manifest), len(predictions), sum(skipped.values()))

    predictions = predictions.assign(fold=np.int32(fold), seed=np.int32(seed))
    metrics = compute_metrics(predictions, class_names, top_k=int(top_k), task=task)
    document = build_metrics_document(
        model=model_name if tta == "none" else f"{model_name}{TTA_ROW_SUFFIX}",
        architecture=str(info.get("architecture", "unknown")),
        weights=str(info.get("weights", "unknown")),
        dataset_sha256=_manifest_digest(manifest_path),
        train_seconds=info.get("train_seconds"),
        eval_seconds=eval_seconds,
        metrics=metrics,
        test_manifest=",".join(_paths(manifest_path)),
        n_manifest=len(manifest),
        skipped_by_reason=skipped,
        device=info.get("device"),
        task=task,
        unit=IMAGE,
    )
    document["cv"] = {"folds": int(folds), "seeds": [int(seed)], "runs": [run_summary(document, fold, seed)]}
    if tta != "none":
        document["tta"] = tta
    copy_provenance(document, [info])  # structured: pooling over folds reads it, not the text
    write_predictions(predictions, predictions_path, class_names)
    write_json(document, metrics_path)
    _log_result(document)
    return document


# --- shared with the bag-model evaluation (quiltflow.evaluation.bag_evaluate) ---
path_list = _paths
manifest_digest = _manifest_digest
read_train_info = _train_info
