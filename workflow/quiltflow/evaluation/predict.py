"""Prediction on new images with a trained model (rule predict_images, and notebooks).

Each image goes through exactly the preparation its model's shards went through:
``shards.prepare_views`` (framing, resize, JPEG at the shard quality, with the shard stage's
checks for bad files), then the JPEG bytes are decoded by ``tf.io.decode_jpeg`` as the tf.data
reader decodes them. A test image therefore gets the probabilities evaluate_model gave it; with
grid framing a source image's cell probabilities are averaged, as evaluation averages them.

Single-label models (``label_map.json`` task ``multiclass``) give softmax probabilities and the
argmax label. Multi-label models (task ``multilabel``: a sigmoid per label) give each label's
independent probability, the top-scoring label, and every label whose probability reaches that
label's threshold (``train_info.json`` ``thresholds``, F1-optimal on the validation split).

A bad file never stops the run and is never dropped: its row says why (``status`` is one of the
shard stage's skip reasons) and the others are predicted. TensorFlow is imported only where a
model runs, so listing inputs and reading settings stay cheap.

Python::

    from quiltflow.evaluation.predict import predict_paths
    table = predict_paths("results/models/custom_cnn/model.keras", ["a.jpg", "b.png"])
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, read_label_map
from quiltflow.core.paths import LABEL_MAP_FILE, TRAIN_INFO_FILE
from quiltflow.core.settings import ShardSettings
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, TASKS, read_task
from quiltflow.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, BadImage, prepare_views
from quiltflow.models.thresholds import ordered_thresholds
from quiltflow.records.predictions import probability_column

log = logging.getLogger("quiltflow.evaluation.predict")

OK = "ok"  # status of a predicted image; any other status is a shard-stage skip reason
PATH_COLUMN = "path"
FOLDER = "folder"  # source_kind of a folder of images
# A folder is searched (recursively) for files with these extensions; other files are counted
# in the log. Listed paths (CSV/Parquet) are all tried, whatever their extension.
TABLE_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
LABELS_SEPARATOR = "|"  # pred_labels of a multi-label model: the labels over threshold, joined
PROGRESS_SECONDS = 10.0

ModelPaths = str | os.PathLike | Sequence[str | os.PathLike]


# ------------------------------------------------------------------------------ inputs


def list_images(source: str | os.PathLike) -> list[str]:
    """The images named by ``predict.images``: a folder (searched recursively, sorted) or a
    CSV/Parquet with a ``path`` column (rows in order; relative paths are relative to the
    table's folder). A missing source or column is a one-line UserError naming it."""
    source = Path(source)
    kind = source_kind(source)
    if kind == FOLDER:
        return list_folder(source)
    return _list_table(source, kind)


def source_kind(source: Path) -> str:
    """``FOLDER``, "csv" or "parquet": what ``predict.images`` names; otherwise a one-line UserError."""
    if source.is_dir():
        return FOLDER
    if not source.exists():
        raise UserError(
            f"predict.images: {source} does not exist (a folder of images, or a CSV/Parquet with a path column)"
        )
    kind = TABLE_EXTENSIONS.get(source.suffix.lower())
    if kind is None:
        raise UserError(f"predict.images: {source} is neither a folder nor a .csv/.parquet table of paths")
    return kind


def list_folder(folder: Path) -> list[str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [str(p) for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if others:
        log.info("%s: %d files without an image extension not listed (e.g. %s)", folder, len(others), others[0].name)
    log.info("%s: %d images found", folder, len(images))
    return images


def _list_table(table_path: Path, kind: str) -> list[str]:
    return table_paths(read_table(table_path, kind), table_path)


def read_table(table_path: Path, kind: str, columns: Sequence[str] = (PATH_COLUMN,)) -> pd.DataFrame:
    """A CSV/Parquet listing with ``columns`` (CSV: read as text, empty cells as ""); a missing
    column or an unreadable file is a one-line UserError naming it."""
    try:
        if kind == "csv":
            table = pd.read_csv(table_path, dtype=dict.fromkeys(columns, "string"), keep_default_na=False)
        else:
            table = pd.read_parquet(table_path)
    except Exception as e:  # pandas/pyarrow raise many types for unreadable files
        raise UserError(f"predict.images: cannot read {table_path} ({type(e).__name__}: {e})".splitlines()[0]) from None
    for column in columns:
        if column not in table.columns:
            raise UserError(f"predict.images: {table_path} has no column {column!r} (columns: {list(table.columns)})")
    return table


def table_paths(table: pd.DataFrame, table_path: Path) -> list[str]:
    """The ``path`` column, rows in order; relative paths resolved against the table's folder."""
    base = table_path.parent
    paths = ["" if pd.isna(p) else str(p) for p in table[PATH_COLUMN]]
    return [p if not p or Path(p).is_absolute() else str(base / p) for p in paths]


# ------------------------------------------------------------------------------ the run's settings


def results_dir_of(model_path: str | os.PathLike) -> Path:
    """The ``results/`` folder of the run that trained ``model_path`` (results/models/{model}/...)."""
    for parent in Path(model_path).resolve().parents:
        if parent.name == "models" and (parent.parent / "splits").is_dir():
            return parent.parent
    raise UserError(
        f"{model_path}: not inside a run's results/models/ folder; pass settings= and class_names= "
        "(and task=, thresholds= for a multi-label model)"
    )


def run_shard_settings(model_path: str | os.PathLike) -> ShardSettings:
    """How the run's images were prepared (image size, JPEG quality, framing): the ``shards``
    its training job recorded in the ``train_info.json`` beside ``model_path``."""
    info_path = Path(model_path).with_name(TRAIN_INFO_FILE)
    if not info_path.is_file():
        raise UserError(
            f"{model_path}: not inside a run's results/models/ folder (no {TRAIN_INFO_FILE} beside it); pass "
            "settings= and class_names= (and task=, thresholds= for a multi-label model)"
        )
    shards = read_json(info_path, "train info").get("shards")
    if not shards:
        raise UserError(
            f"{info_path}: no 'shards' (trained before runs recorded how their images were prepared): "
            "retrain the model, or pass settings="
        )
    return ShardSettings.from_preparation(shards)


# ------------------------------------------------------------------------------ one image


def prepare_pixels(path: str, settings: ShardSettings, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 ``[views, S, S, 3]`` of one image, as the tf.data reader sees its shard records.

    ``shards.prepare_views`` makes the JPEG bytes the shards hold (raising ``BadImage`` with the
    shard stage's reason); ``tf.io.decode_jpeg`` decodes them as ``data.make_dataset`` does.
    """
    import tensorflow as tf

    if not path:
        raise BadImage("missing", "empty path")
    views = prepare_views(
        path,
        settings.image_size,
        settings.jpeg_quality,
        framing=settings.framing,
        grid_size=settings.grid_size,
        max_pixels=max_pixels,
    )
    return np.stack([tf.io.decode_jpeg(view, channels=3).numpy() for view in views])


def _prepare_or_reason(path: str, settings: ShardSettings, max_pixels: int) -> np.ndarray | BadImage:
    try:
        return prepare_pixels(path, settings, max_pixels)
    except BadImage as e:
        return e


def prepared_chunks(paths: list[str], settings: ShardSettings, max_pixels: int, chunk: int, threads: int) -> Iterator:
    """Chunks of ``pixels or BadImage`` per path; the next chunk is prepared while one is predicted."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = None
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            futures = [pool.submit(_prepare_or_reason, p, settings, max_pixels) for p in part]
            if pending is not None:
                yield [f.result() for f in pending]
            pending = futures
        if pending is not None:
            yield [f.result() for f in pending]


# ------------------------------------------------------------------------------ models


def load_models(model_paths: ModelPaths) -> list[Any]:
    """Saved models (uncompiled); several = the runs of one model, whose probabilities are averaged."""
    import keras

    import quiltflow.models.builders  # noqa: F401  (registers ResNet50Preprocess for deserialisation)

    paths = [model_paths] if isinstance(model_paths, (str, os.PathLike)) else list(model_paths)
    if not paths:
        raise UserError("predict: no model given")
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"predict: model file {path} does not exist (train it first: snakemake train)")
    return [keras.models.load_model(path, compile=False) for path in paths]


def train_info_paths_of(model_paths: ModelPaths) -> list[Path]:
    """The ``train_info.json`` of each model: the file next to its ``model.keras``."""
    paths = [model_paths] if isinstance(model_paths, (str, os.PathLike)) else list(model_paths)
    return [Path(p).with_name(TRAIN_INFO_FILE) for p in paths]


def run_thresholds(train_info_paths: Sequence[str | os.PathLike], class_names: Sequence[str]) -> np.ndarray:
    """float64 ``[classes]``: each label's decision threshold, the mean over the runs' thresholds.

    A multi-label run's ``train_info.json`` holds ``thresholds: {class: float}`` (F1-optimal per
    label on its validation split). With several runs their probabilities are averaged, so their
    thresholds are too: the averaged probability is compared with the averaged threshold (for one
    run, its own threshold). A missing file, key or class is a one-line UserError.
    """
    if not train_info_paths:
        raise UserError("predict: a multi-label model needs its runs' train_info.json (thresholds); none given")
    per_run = []
    for path in train_info_paths:
        if not Path(path).is_file():
            raise UserError(f"predict: {path} does not exist (a multi-label model's thresholds are read from it)")
        values = ordered_thresholds(read_json(path, "train info").get("thresholds"), class_names, str(path))
        per_run.append(values)
    return np.mean(per_run, axis=0)


def _thresholds_array(thresholds: Mapping[str, float] | Sequence[float], class_names: Sequence[str]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        return ordered_thresholds(thresholds, class_names, "predict")
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(values) != len(class_names):
        raise UserError(f"predict: {len(values)} thresholds for {len(class_names)} classes")
    return values


def _check_model(model: Any, settings: ShardSettings, num_classes: int, task: str = MULTICLASS) -> None:
    shape = tuple(model.input_shape)
    if tuple(shape[1:3]) != (settings.image_size, settings.image_size):
        raise UserError(f"model {model.name}: input {shape[1:3]} but images are prepared at {settings.image_size}")
    check_head(model, num_classes, task)


def check_head(model: Any, num_classes: int, task: str = MULTICLASS) -> None:
    """The model's output fits the label map: one unit per class, a sigmoid for multi-label, a
    softmax (or logits) otherwise (frame and bag models alike)."""
    width = model.output_shape[-1]
    if width != num_classes:
        raise UserError(f"model {model.name}: {width} outputs but the label map has {num_classes} classes")
    from quiltflow.models.builders import output_layer

    head = output_layer(model)[1]
    if task == MULTILABEL and head == "softmax":
        raise UserError(
            f"model {model.name}: ends in a softmax but the label map's task is {MULTILABEL} (sigmoid per label)"
        )
    if task == MULTICLASS and head == "sigmoid":
        raise UserError(
            f"model {model.name}: ends in a sigmoid (multi-label) but the task is {MULTICLASS}; "
            f"pass task={MULTILABEL!r} (label_map.json records it for a run)"
        )


def _probabilities(models: list[Any], pixels: np.ndarray, views: int, task: str = MULTICLASS) -> np.ndarray:
    """float64 ``[images, classes]``: each model's probabilities, cells then models averaged.

    ``evaluate.as_probabilities``, evaluate_model's own check: a softmax only for single-label
    logits; multi-label sigmoid outputs as they are.
    """
    from quiltflow.evaluation.evaluate import as_probabilities

    per_model = []
    for model in models:
        probs = as_probabilities(np.asarray(model.predict_on_batch(pixels)), model.name, task)
        per_model.append(probs.reshape(-1, views, probs.shape[1]).mean(axis=1))
    return np.mean(per_model, axis=0)


# ------------------------------------------------------------------------------ the table


def label_columns(
    probs: np.ndarray,
    class_names: Sequence[str],
    task: str = MULTICLASS,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Result columns from ``[images, classes]`` probabilities (NaN rows for bad images).

    Both tasks: ``pred_label`` (class name), ``pred_index``, ``pred_prob`` of the top-scoring
    class, and ``prob_<class>``. Multi-label adds ``pred_labels`` (the labels whose probability is
    >= their threshold, label-map order, joined by ``LABELS_SEPARATOR``; "" when none; null for a
    bad image) and ``n_pred_labels``, between ``pred_prob`` and the ``prob_`` columns.
    """
    if task not in TASKS:
        raise UserError(f"predict: task {task!r} is not one of {', '.join(TASKS)}")
    ok = ~np.isnan(probs).any(axis=1)
    filled = np.nan_to_num(probs, nan=-1.0)
    index = [int(i) if good else None for i, good in zip(filled.argmax(axis=1), ok)]
    columns: dict[str, Any] = {
        "pred_label": pd.array([None if i is None else class_names[i] for i in index], dtype="string"),
        "pred_index": pd.array(index, dtype="Int32"),
        "pred_prob": np.where(ok, filled.max(axis=1), np.nan).astype(np.float32),
    }
    if task == MULTILABEL:
        if thresholds is None:
            raise UserError("predict: a multi-label model needs thresholds")
        over = filled >= _thresholds_array(thresholds, class_names)[None, :]
        labels = [
            LABELS_SEPARATOR.join(c for c, on in zip(class_names, row) if on) if good else None
            for row, good in zip(over, ok)
        ]
        columns["pred_labels"] = pd.array(labels, dtype="string")
        columns["n_pred_labels"] = pd.array(
            [int(n) if good else None for n, good in zip(over.sum(axis=1), ok)], dtype="Int32"
        )
    for k, name in enumerate(class_names):
        columns[probability_column(name)] = probs[:, k].astype(np.float32)
    return columns


def _result_table(
    paths: list[str],
    outcomes: list[np.ndarray | BadImage],
    probs: np.ndarray,
    class_names,
    task: str = MULTICLASS,
    thresholds: np.ndarray | None = None,
) -> pd.DataFrame:
    status = [OK if not isinstance(o, BadImage) else o.reason for o in outcomes]
    detail = ["" if not isinstance(o, BadImage) else o.detail for o in outcomes]
    table = pd.DataFrame({"path": pd.array(paths, dtype="string"), "status": status, "detail": detail})
    return table.assign(**label_columns(probs, class_names, task, thresholds))


class _Progress:
    """One log line every PROGRESS_SECONDS (and at the end): images done, skipped, rate."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.skipped = total, 0, Counter()
        self.start = self.last = time.perf_counter()

    def update(self, outcomes: list) -> None:
        self.done += len(outcomes)
        self.skipped.update(o.reason for o in outcomes if isinstance(o, BadImage))
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info(
                "predicted %d/%d images (%.1f img/s), skipped %s",
                self.done,
                self.total,
                rate,
                dict(sorted(self.skipped.items())) or "none",
            )


def predict_paths(
    model_path: ModelPaths,
    paths: Sequence[str | os.PathLike],
    *,
    settings: ShardSettings | None = None,
    class_names: Sequence[str] | None = None,
    task: str | None = None,
    thresholds: Mapping[str, float] | Sequence[float] | None = None,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    threads: int = 1,
) -> pd.DataFrame:
    """Predict image files with a trained model; one row per path, in order, none dropped.

    ``model_path``: a ``model.keras`` (or several: the runs of one model, probabilities averaged).
    ``settings``, ``class_names`` and ``task`` default to the run that trained it (its shard
    reports and ``results/splits/label_map.json``; outside a run, ``task`` defaults to
    multiclass and a sigmoid-headed model is then an error). Columns: ``path``, ``status`` (``ok``
    or the shard stage's skip reason), ``detail``, ``pred_label``, ``pred_index``, ``pred_prob``,
    then for a multi-label model ``pred_labels`` and ``n_pred_labels``, then ``prob_<class>``.
    ``thresholds`` (multi-label: ``{class: float}`` or one per class in label-map order) default
    to the mean of the runs' ``train_info.json`` thresholds (``run_thresholds``).
    ``batch_size`` counts model inputs (a grid image is ``grid_size``^2 of them); ``threads``
    prepare images in parallel while the model predicts.
    """
    first = model_path if isinstance(model_path, (str, os.PathLike)) else next(iter(model_path), "")
    if settings is None:
        settings = run_shard_settings(first)
    class_names, task = run_labels(first, class_names, task)
    models = load_models(model_path)
    for model in models:
        _check_model(model, settings, len(class_names), task)
    thresholds = _resolve_thresholds(model_path, class_names, task, thresholds)
    paths = [str(p) for p in paths]
    views = settings.records_per_image
    chunk = max(1, int(batch_size) // views)
    probs = np.full((len(paths), len(class_names)), np.nan)
    outcomes: list[np.ndarray | BadImage] = []
    progress = _Progress(len(paths))
    for prepared in prepared_chunks(paths, settings, max_pixels, chunk, threads):
        good = [k for k, o in enumerate(prepared) if not isinstance(o, BadImage)]
        if good:
            pixels = np.concatenate([prepared[k] for k in good])
            probs[[len(outcomes) + k for k in good]] = _probabilities(models, pixels, views, task)
        outcomes += [o if isinstance(o, BadImage) else None for o in prepared]
        progress.update(prepared)
    return _result_table(paths, outcomes, probs, class_names, task, thresholds)


def run_labels(model_path, class_names: Sequence[str] | None, task: str | None) -> tuple[Sequence[str], str]:
    """(class names, task), each defaulting to the run's label map. Outside a run the task
    defaults to multiclass (``_check_model`` then refuses a sigmoid-headed model)."""
    if class_names is None:
        class_names = read_label_map(results_dir_of(model_path) / "splits" / LABEL_MAP_FILE)
    if task is None:
        try:
            task = read_task(results_dir_of(model_path) / "splits" / LABEL_MAP_FILE)
        except UserError:
            task = MULTICLASS
    if task not in TASKS:
        raise UserError(f"predict: task {task!r} is not one of {', '.join(TASKS)}")
    return class_names, task


def _resolve_thresholds(model_path: ModelPaths, class_names, task: str, thresholds) -> np.ndarray | None:
    """A multi-label model's thresholds in label-map order (given, or the runs' mean); None otherwise."""
    if task != MULTILABEL:
        return None
    if thresholds is None:
        values = run_thresholds(train_info_paths_of(model_path), class_names)
    else:
        values = _thresholds_array(thresholds, class_names)
    log.info("thresholds: %s", {c: round(float(t), 4) for c, t in zip(class_names, values)})
    return values


def predict_images(
    *,
    model_paths: ModelPaths,
    images: str | os.PathLike,
    label_map_path: str | os.PathLike,
    settings: ShardSettings,
    parquet_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    train_info_paths: Sequence[str | os.PathLike] | None = None,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    threads: int = 1,
) -> pd.DataFrame:
    """Rule predict_images: list ``images``, predict them, write the Parquet and CSV tables.

    The task comes from ``label_map_path``; a multi-label model's thresholds from
    ``train_info_paths`` (one per run, default: next to each model), averaged over the runs.
    """
    from quiltflow.models.runtime import set_thread_pools

    set_thread_pools(max(1, int(threads)))  # before TensorFlow runs anything
    class_names = read_label_map(label_map_path)
    task = read_task(label_map_path)
    thresholds = None
    if task == MULTILABEL:
        infos = train_info_paths_of(model_paths) if train_info_paths is None else list(train_info_paths)
        thresholds = run_thresholds(infos, class_names)
    paths = list_images(images)
    log.info(
        "%d images from %s; task %s; preparation: %s at %d px, JPEG quality %d",
        len(paths),
        images,
        task,
        settings.framing,
        settings.image_size,
        settings.jpeg_quality,
    )
    table = predict_paths(
        model_paths,
        paths,
        settings=settings,
        class_names=class_names,
        task=task,
        thresholds=thresholds,
        batch_size=batch_size,
        max_pixels=max_pixels,
        threads=threads,
    )
    write_tables(table, Path(parquet_path), Path(csv_path))
    counts = table["status"].value_counts().to_dict()
    log.info("wrote %s and %s: %s", parquet_path, csv_path, dict(sorted(counts.items())))
    return table


def write_tables(table: pd.DataFrame, parquet_path: Path, csv_path: Path) -> None:
    """Both tables, each through a temporary file renamed when complete."""
    write_renamed(parquet_path, table.to_parquet)
    write_renamed(csv_path, table.to_csv)


def write_renamed(path: Path, write) -> None:
    """``write(tmp, index=False)`` into a temporary file beside ``path``, renamed when complete
    (a killed job leaves no half-written table under the output's name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, index=False)
    os.replace(tmp, path)
