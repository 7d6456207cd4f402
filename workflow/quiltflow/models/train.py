"""Resumable Keras training of the registered architectures (one ``fit`` per phase, callbacks only).

``out_dir`` receives ``model.keras`` (best epoch by val loss, float32, no optimizer),
``history.csv`` (one row per epoch across resumes), ``train_info.json``,
``checkpoints/best.keras``, ``backup/`` (BackupAndRestore) and ``tensorboard/``.
Rerunning after a crash or SIGKILL resumes from the last finished epoch (``quiltflow.models.resume``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map, write_json
from quiltflow.core.paths import MODEL_FILE, TRAIN_INFO_FILE
from quiltflow.core.settings import ModelSettings
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, read_task
from quiltflow.models.builders import (
    FEATURE_DIM,
    build_model,
    dense_head,
    set_backbone_trainable,
    weights_description,
)
from quiltflow.models.resume import TrainingRun, backed_up_epoch, prior_val_state
from quiltflow.models.runtime import configure_runtime, float32_policy
from quiltflow.records.metrics_document import PROVENANCE_KEYS
from quiltflow.records.split_report import SplitReport

log = logging.getLogger("quiltflow.models.train")


def class_weights_from_counts(class_counts: Mapping[int, int] | Sequence[int], num_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * n_c)`` over the k classes present (sklearn's "balanced").

    The sample-weighted mean over the training set is 1, so the loss scale (and the learning
    rate's meaning) stays as without weights. Absent classes get 1.0 (never used).
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    items = class_counts.items() if isinstance(class_counts, Mapping) else enumerate(class_counts)
    for index, count in items:
        if not 0 <= int(index) < num_classes:
            raise UserError(f"class_counts: class index {index} outside 0..{num_classes - 1}")
        if count < 0:
            raise UserError(f"class_counts: negative count {count} for class {index}")
        counts[int(index)] = int(count)
    present = counts > 0
    if not present.any():
        raise UserError("class_counts: the training split is empty")
    total, k = counts.sum(), present.sum()
    return {c: float(total / (k * counts[c])) if present[c] else 1.0 for c in range(num_classes)}


# A label seen in 1 of 10,000 training images would weigh 9,999: one image would steer the loss.
MAX_POSITIVE_WEIGHT = 100.0


def positive_weights_from_counts(label_counts: Sequence[int], num_images: int) -> np.ndarray:
    """Per-label positive weights ``n_neg / n_pos`` (capped at ``MAX_POSITIVE_WEIGHT``): a label's
    positives then weigh as much as its negatives in the loss. A label without positives gets 1."""
    counts = np.asarray(label_counts, dtype=np.float64)
    if num_images <= 0 or (counts < 0).any() or (counts > num_images).any():
        raise UserError(f"label counts {counts.astype(int).tolist()} do not fit {num_images} training images")
    weights = np.where(counts > 0, (num_images - counts) / np.maximum(counts, 1), 1.0)
    return np.clip(weights, 0.0, MAX_POSITIVE_WEIGHT)


@keras.saving.register_keras_serializable(package="quiltflow")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy of each label's sigmoid output, positives weighted per label
    (``positive_weights``), averaged over the labels."""

    def __init__(self, positive_weights: Sequence[float], name: str = "weighted_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(w) for w in positive_weights]

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        # Element-wise cross-entropy through Keras, which recovers the logits behind a sigmoid
        # layer: clipping saturated probabilities instead would zero the gradient exactly where a
        # model with huge logits (e.g. on a random frozen ResNet's features) needs it.
        per_label = keras.ops.binary_crossentropy(y_true, y_pred)
        weights = keras.ops.convert_to_tensor(self.positive_weights, dtype=y_pred.dtype)
        return keras.ops.mean(per_label * (weights * y_true + 1.0 - y_true), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "positive_weights": self.positive_weights}


@dataclass(frozen=True)
class Targets:
    """What a model predicts: the task (quiltflow.core.tasks), the class names in label-map order and,
    multi-label only, the per-label positive weights of the loss (None: unweighted)."""

    task: str = MULTICLASS
    class_names: tuple[str, ...] = ()
    positive_weights: tuple[float, ...] | None = None

    def named(self, values: Sequence[float]) -> dict[str, float]:
        """Per-label values keyed by class name (by index when no names were given)."""
        names = self.class_names or tuple(str(i) for i in range(len(values)))
        return {name: float(v) for name, v in zip(names, values)}


def _compile(model: keras.Model, learning_rate: float, jit_compile: bool, targets: Targets | None = None) -> None:
    targets = targets or Targets()
    if targets.task == MULTILABEL:  # multi-hot float labels, one sigmoid per label
        weights = targets.positive_weights
        loss = keras.losses.BinaryCrossentropy() if weights is None else WeightedBinaryCrossentropy(weights)
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(multi_label=True, name="auc")]
    else:  # integer labels: same loss as categorical cross-entropy on one-hot labels
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics, jit_compile=jit_compile)


def _fit(
    model,
    run: TrainingRun,
    train_ds,
    val_ds,
    *,
    phase_dir: Path,
    initial_epoch: int,
    epochs: int,
    patience: int | None,
    class_weight: dict[int, float] | None,
) -> None:
    model._initial_epoch = None  # BackupAndRestore of an earlier phase must not leak into this one
    model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=initial_epoch,
        epochs=epochs,
        class_weight=class_weight,
        # The readers shuffle (seeded); Keras ignores shuffle for a Dataset but warns if it is True.
        shuffle=False,
        callbacks=run.callbacks(phase_dir, patience),
        verbose=2,  # one progress line per epoch in the log
    )


def _count_labels(ds: tf.data.Dataset, num_classes: int) -> np.ndarray:
    """Per-class counts by reading the labels once (only when the caller did not supply them)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for element in ds:
        labels = np.asarray(element[1])
        if labels.ndim == 2:  # multi-hot: images carrying each label
            counts += labels.sum(axis=0).astype(np.int64)
        else:
            counts += np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return counts


def _prepare(settings: ModelSettings, out_dir, seed, threads):
    if settings.inject_failure:
        raise RuntimeError(f"models.{settings.name}.inject_failure is set: failing on purpose")
    strategy, device = configure_runtime(threads)
    keras.utils.set_random_seed(seed)
    return strategy, device, TrainingRun(out_dir)


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a diverged loss is recorded as null."""
    return value if value is not None and math.isfinite(value) else None


def _finish(run: TrainingRun, final: keras.Model, info: dict[str, Any]) -> dict[str, Any]:
    final.save(run.out / MODEL_FILE)
    rows = run.finish_history()
    best_val, _, best_epoch = prior_val_state(rows)
    info.update(epochs_run=len(rows), best_epoch=best_epoch + 1 if rows else 0, best_val_loss=_finite_or_none(best_val))
    write_json(info, run.out / TRAIN_INFO_FILE)  # atomic: a killed job leaves no half file
    log.info("trained %s: %d epochs, best epoch %d", info["model"], info["epochs_run"], info["best_epoch"])
    return info


def _info(s: ModelSettings, device, image_size, seed, num_train, num_val, resumed, class_weight, seconds):
    return {
        "model": s.name,
        "architecture": s.architecture,
        "weights": weights_description(s.weights),
        "weights_source": s.weights,
        "image_size": int(image_size),
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        **device,
        "resumed_from_epoch": resumed,
        "class_weights": {str(k): v for k, v in class_weight.items()} if class_weight else None,
        "settings": s.as_dict(),
        "train_seconds": round(seconds, 3),
    }


def _with_provenance(info: dict[str, Any], provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """Where the run's inputs came from: a pretrained backbone's provenance
    (quiltflow.dag.pretraining.provenance) replaces the bare file description, so comparison rows
    say which pretraining, method and pool; ``shards`` (ShardSettings.preparation) is how its images
    were prepared, which prediction on new images repeats."""
    provenance = provenance or {}
    if "description" in provenance:
        info["weights"] = provenance["description"]
        info.update({key: provenance[key] for key in PROVENANCE_KEYS if key in provenance})
    if "shards" in provenance:
        info["shards"] = dict(provenance["shards"])
    return info


def _class_weight(s: ModelSettings, class_counts, num_classes: int, targets: Targets) -> dict[int, float] | None:
    """Balanced class weights (multiclass); a multi-label loss weighs positives per label instead."""
    if not s.class_weights or targets.task == MULTILABEL:
        return None
    return class_weights_from_counts(class_counts, num_classes)


def _resolve_targets(s: ModelSettings, targets: Targets | None, label_counts, num_images: int) -> Targets:
    """``targets`` with multi-label positive weights from ``label_counts`` (in ``num_images``)
    when ``class_weights`` is on and the caller gave none."""
    targets = targets or Targets()
    if targets.task == MULTILABEL and s.class_weights and targets.positive_weights is None:
        weights = positive_weights_from_counts(np.asarray(label_counts), num_images)
        targets = Targets(targets.task, targets.class_names, tuple(weights))
    return targets


def _validation_thresholds(model: keras.Model, val_ds, targets: Targets) -> np.ndarray | None:
    """Multi-label: each label's F1-optimal decision threshold on the validation batches
    (``(inputs, multi-hot)``), predicted by the final ``model``; None for a multiclass task."""
    if targets.task != MULTILABEL:
        return None
    from quiltflow.models.thresholds import f1_optimal_thresholds

    probs, labels = [], []
    for inputs, batch_labels in val_ds:
        probs.append(np.asarray(model.predict_on_batch(inputs), dtype=np.float64))
        labels.append(np.asarray(batch_labels))
    return f1_optimal_thresholds(np.concatenate(labels).astype(np.int8), np.concatenate(probs))


def _with_targets(info: dict[str, Any], targets: Targets, thresholds: np.ndarray | None) -> dict[str, Any]:
    """train_info's task, and (multi-label) the positive weights and validation thresholds."""
    info["task"] = targets.task
    if targets.task == MULTILABEL:
        weights = targets.positive_weights
        info["positive_weights"] = None if weights is None else targets.named(weights)
        info["thresholds"] = targets.named(thresholds)
        info["thresholds_from"] = "validation split, F1-optimal per label"
    return info


def _resume_epoch(s: ModelSettings, run: TrainingRun) -> int:
    """Epochs already finished: the phase backup that exists tells."""
    main_dir, warmup_dir = run.backup / "main", run.backup / "warmup"
    if backed_up_epoch(main_dir):
        return backed_up_epoch(main_dir)
    if s.spec.finetunes_backbone:
        if (run.backup / "warmup_done.weights.h5").is_file():
            return s.warmup_epochs
        return backed_up_epoch(warmup_dir)
    return 0


def _start_run(run: TrainingRun, resume: int, name: str) -> int:
    run.start(resume)
    if resume:
        log.info("resuming %s after epoch %d", name, resume)
    return resume


def _warm_up_head(model, s: ModelSettings, run: TrainingRun, strategy, train_ds, val_ds, class_weight, targets) -> None:
    """Head-only epochs with the backbone frozen, then unfreeze it (fine-tuning architectures)."""
    warmup_done = run.backup / "warmup_done.weights.h5"
    if warmup_done.is_file():
        model.load_weights(warmup_done)
    else:
        with strategy.scope():
            _compile(model, s.learning_rate, s.jit_compile, targets)
        _fit(
            model,
            run,
            train_ds,
            val_ds,
            phase_dir=run.backup / "warmup",
            initial_epoch=0,
            epochs=s.warmup_epochs,
            patience=None,
            class_weight=class_weight,
        )
        model.save_weights(warmup_done)
    set_backbone_trainable(model, True)


def train_model(
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    out_dir: str | Path,
    settings: ModelSettings,
    num_classes: int,
    image_size: int,
    seed: int,
    class_counts: Mapping[int, int] | Sequence[int] | None = None,
    threads: int | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    targets: Targets | None = None,
) -> dict[str, Any]:
    """Train on batched ``(uint8 images, labels)`` datasets; returns ``train_info``. Any
    architecture works on images (the workflow trains features-trained ones with
    ``train_frozen_head``). ``class_counts`` (by label) and ``num_train``/``num_val`` are counted
    from the data if not given. ``targets``: task (multi-label: multi-hot), names, positive weights.
    """
    s = settings
    strategy, device, run = _prepare(s, out_dir, seed, threads)
    if class_counts is None and s.class_weights:
        class_counts = _count_labels(train_ds, num_classes)
    num_train = _num_records(train_ds) if num_train is None else num_train
    num_val = _num_records(val_ds) if num_val is None else num_val
    targets = _resolve_targets(s, targets, class_counts, num_train)
    class_weight = _class_weight(s, class_counts, num_classes, targets)
    resume = _start_run(run, _resume_epoch(s, run), s.name)
    build = dict(dropout=s.dropout, seed=seed, task=targets.task)
    with strategy.scope():  # weights are resolved here: offline ImageNet fails before training
        model = build_model(s.architecture, num_classes, image_size, weights=s.weights, **build)
    start = time.perf_counter()
    first_epoch, learning_rate = 0, s.learning_rate
    if s.spec.finetunes_backbone:
        _warm_up_head(model, s, run, strategy, train_ds, val_ds, class_weight, targets)
        first_epoch, learning_rate = s.warmup_epochs, s.finetune_learning_rate
    with strategy.scope():
        _compile(model, learning_rate, s.jit_compile, targets)
    _fit(
        model,
        run,
        train_ds,
        val_ds,
        phase_dir=run.backup / "main",
        initial_epoch=first_epoch,
        epochs=s.epochs,
        patience=s.patience,
        class_weight=class_weight,
    )
    seconds = time.perf_counter() - start

    best = keras.models.load_model(run.best, compile=False) if run.best.is_file() else model
    with float32_policy():
        # A published encoder's network comes from its checkpoint: built from it, then overwritten.
        bare = s.weights if s.spec.uses_encoder else "none"
        final = build_model(s.architecture, num_classes, image_size, weights=bare, **build)
    final.set_weights(best.get_weights())
    info = _info(s, device, image_size, seed, num_train, num_val, resume, class_weight, seconds)
    return _wrap_up(run, final, info, targets, (final, val_ds), provenance)


def _num_records(ds: tf.data.Dataset) -> int:
    """Examples in a batched dataset (one pass over it)."""
    return int(sum(int(tf.shape(element[1])[0]) for element in ds))


def _wrap_up(run: TrainingRun, final, info: dict[str, Any], targets: Targets, scoring, provenance) -> dict[str, Any]:
    """Drop the resume state; add the task facts (multi-label: thresholds from ``scoring`` =
    (model, validation batches)) and the provenance; save the final model and train_info."""
    shutil.rmtree(run.backup, ignore_errors=True)
    info = _with_targets(info, targets, _validation_thresholds(*scoring, targets))
    return _finish(run, final, _with_provenance(info, provenance))


def _features_dataset(data: Mapping[str, np.ndarray], batch_size: int, shuffle: bool, seed: int):
    labels = np.asarray(data["labels"])
    labels = labels.astype(np.float32 if labels.ndim == 2 else np.int32)  # multi-hot: float targets
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(data["features"], np.float32), labels))
    if shuffle:
        ds = ds.shuffle(len(data["labels"]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _check_features(features: Mapping[str, Mapping[str, np.ndarray]], num_classes: int, task: str) -> None:
    """Labels: one per feature row, class indices (multiclass) or 0/1 rows of num_classes (multi-label)."""
    for name, data in features.items():
        labels = np.asarray(data["labels"])
        if task == MULTILABEL:
            bad = labels.ndim != 2 or labels.shape[1:] != (num_classes,) or not np.isin(labels, (0, 1)).all()
        else:
            bad = labels.ndim != 1 or (len(labels) > 0 and (labels.min() < 0 or labels.max() >= num_classes))
        if len(labels) != len(data["features"]) or bad:
            raise UserError(f"{name}: labels do not match features or the {num_classes} classes ({task})")


def _image_model_with_head(s: ModelSettings, num_classes: int, image_size: int, head, backbone_seed: int, task: str):
    """The full image model: the base the features came from (same weights and seed) + ``head``."""
    with float32_policy():
        final = build_model(
            s.architecture, num_classes, image_size, weights=s.weights, dropout=s.dropout, seed=backbone_seed, task=task
        )
    final.get_layer("head").set_weights(head.get_weights())
    return final


def train_frozen_head(
    features_train: Mapping[str, np.ndarray],
    features_val: Mapping[str, np.ndarray],
    *,
    out_dir: str | Path,
    settings: ModelSettings,
    num_classes: int,
    image_size: int,
    seed: int,
    class_counts: Mapping[int, int] | Sequence[int] | None = None,
    threads: int | None = None,
    shuffle: bool = True,
    backbone_seed: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    targets: Targets | None = None,
) -> dict[str, Any]:
    """Train the head of a features-trained architecture on cached features (``extract_features``):
    an epoch costs a few dense layers, not a ResNet50 pass. ``model.keras`` is still the full image
    model; ``checkpoints/best.keras`` the head alone. ``backbone_seed`` (default ``seed``): the seed
    the features were extracted with (a random base is rebuilt from it)."""
    s = settings
    if not s.spec.trains_on_features:
        raise UserError(f"models.{s.name}.architecture: {s.architecture} does not train on cached features")
    task = (targets or Targets()).task
    _check_features({"features_train": features_train, "features_val": features_val}, num_classes, task)
    strategy, device, run = _prepare(s, out_dir, seed, threads)
    labels = np.asarray(features_train["labels"])
    if class_counts is None:
        class_counts = labels.sum(axis=0) if task == MULTILABEL else np.bincount(labels, minlength=num_classes)
    targets = _resolve_targets(s, targets, class_counts, len(labels))
    class_weight = _class_weight(s, class_counts, num_classes, targets)

    resume = _start_run(run, backed_up_epoch(run.backup / "main"), s.name)
    with strategy.scope():
        head = dense_head(num_classes, s.dropout, seed, task, feature_dim=np.shape(features_train["features"])[1])
        _compile(head, s.learning_rate, s.jit_compile, targets)
    train_ds = _features_dataset(features_train, s.batch_size, shuffle, seed)
    val_ds = _features_dataset(features_val, s.batch_size, False, seed)
    start = time.perf_counter()
    _fit(
        head,
        run,
        train_ds,
        val_ds,
        phase_dir=run.backup / "main",
        initial_epoch=0,
        epochs=s.epochs,
        patience=s.patience,
        class_weight=class_weight,
    )
    seconds = time.perf_counter() - start

    best = keras.models.load_model(run.best, compile=False) if run.best.is_file() else head
    final = _image_model_with_head(
        s, num_classes, image_size, best, seed if backbone_seed is None else backbone_seed, task
    )
    info = _info(s, device, image_size, seed, len(labels), len(features_val["labels"]), resume, class_weight, seconds)
    info["trained_on"] = "cached features"
    return _wrap_up(run, final, info, targets, (best, val_ds), provenance)


# --- workflow entry point ----------------------------------------------------------------------


def _train_class_counts(
    label_map: str | Path, split_report: str | Path, train_buckets: Sequence[str]
) -> tuple[list[str], list[int], int]:
    """(class names, training images per class (carrying each label) in label order, training
    images) from the split stage's files (``records.split_report``, its one reader)."""
    classes = read_label_map(label_map)
    split = SplitReport.read(split_report)
    counts = split.class_counts_in(train_buckets)
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        raise UserError(
            f"{split_report}: class_counts of {list(train_buckets)} has classes not in {label_map}: {unknown[:3]}"
        )
    return classes, [counts.get(name, 0) for name in classes], split.images_in(train_buckets, "training images")


def _load_cached_features(features, s: ModelSettings, image_size: int):
    """The (train, val) feature caches; they must come from the base the saved model re-attaches."""
    from quiltflow.models.features import load_features

    if not features:
        raise UserError(f"models.{s.name}: {s.architecture} needs features_train/features_val inputs")
    loaded = []
    for paths in features:  # (train buckets, val buckets)
        width = None if s.spec.uses_encoder else FEATURE_DIM  # a published encoder's own width
        parts = [load_features(path, image_size=image_size, feature_dim=width) for path in paths]
        for path, data in zip(paths, parts):
            if "weights" in data and str(data["weights"]) != weights_description(s.weights):
                raise UserError(
                    f"{path}: extracted with weights {data['weights']}, "
                    f"models.{s.name}.weights is {weights_description(s.weights)}"
                )
        loaded.append({key: np.concatenate([part[key] for part in parts]) for key in ("features", "labels")})
    return loaded


def train_from_files(
    *,
    train_index: str | Path | Sequence[str | Path],
    val_index: str | Path | Sequence[str | Path],
    label_map: str | Path,
    split_report: str | Path,
    features: tuple[Sequence[str | Path], Sequence[str | Path]] | None,
    out_dir: str | Path,
    settings: ModelSettings,
    image_size: int,
    seed: int,
    train_buckets: Sequence[str] = ("train",),
    feature_seed: int | None = None,
    threads: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the ``train_model`` rule runs: read the split files, train, write ``out_dir``.

    ``train_index``/``val_index``: one bucket's index JSON or a list (a fold's buckets);
    ``train_buckets`` name the training buckets in the split report (class weights). ``features``
    = (train .npz files, val .npz files) for architectures that train on cached features, which
    were extracted with ``feature_seed`` (default ``seed``); ``seed`` is this run's seed.
    """
    classes, counts, images = _train_class_counts(label_map, split_report, train_buckets)
    # Positive weights from images (a grid image's cells share its labels), not from records.
    targets = _resolve_targets(settings, Targets(read_task(label_map), tuple(classes)), counts, images)
    common = dict(
        targets=targets,
        out_dir=out_dir,
        settings=settings,
        num_classes=len(classes),
        image_size=image_size,
        seed=seed,
        class_counts=counts,
        threads=threads,
        provenance=provenance,
    )
    if settings.spec.trains_on_features:
        train_f, val_f = _load_cached_features(features, settings, image_size)
        backbone_seed = seed if feature_seed is None else feature_seed
        return train_frozen_head(train_f, val_f, backbone_seed=backbone_seed, **common)

    from quiltflow.models.pipeline import make_dataset, num_examples

    train_ds = make_dataset(train_index, settings.batch_size, training=True, augment=settings.augment, seed=seed)
    val_ds = make_dataset(val_index, settings.batch_size, training=False)
    return train_model(train_ds, val_ds, num_train=num_examples(train_index), num_val=num_examples(val_index), **common)


# --- shared with the bag-model trainer (quiltflow.models.train_mil): one run layout for both ---
prepare_run = _prepare
start_run = _start_run
resolve_targets = _resolve_targets
class_weight_for = _class_weight
compile_model = _compile
fit_phase = _fit
run_info = _info
wrap_up_run = _wrap_up
