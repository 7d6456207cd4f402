"""Resumable Keras training of the three models (one ``fit`` per phase, callbacks only).

``out_dir`` receives ``model.keras`` (best epoch by val loss, float32, no optimizer),
``history.csv`` (one row per epoch across resumes), ``train_info.json``,
``checkpoints/best.keras``, ``backup/`` (BackupAndRestore) and ``tensorboard/``.
Rerunning after a crash or SIGKILL resumes from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from quiltflow.config import DEFAULT_WEIGHTS
from quiltflow.errors import UserError
from quiltflow.jsonio import read_json
from quiltflow.models import (
    ARCHITECTURES,
    build_model,
    dense_head,
    resolve_weights_name,
    set_backbone_trainable,
    weights_description,
)

log = logging.getLogger("quiltflow.train")

REQUIRED_KEYS = ("architecture", "epochs", "batch_size", "learning_rate")
OPTIONAL_KEYS = (
    "weights",
    "patience",
    "class_weights",
    "augment",
    "warmup_epochs",
    "finetune_learning_rate",
    "dropout",
    "inject_failure",
    "jit_compile",
)
# Augment images we train on; the frozen head trains on cached features, so it never can.
DEFAULT_AUGMENT = {"custom_cnn": True, "resnet50_frozen": False, "resnet50_finetune": True}
# Same bound as the config schema (models.*.dropout), for callers that skip the schema.
MAX_DROPOUT = 0.9


# --- settings ----------------------------------------------------------------------------------


def resolve_settings(settings: Mapping[str, Any], model_name: str) -> dict[str, Any]:
    """Validate a model's config entry and fill defaults (raises ``UserError`` naming the key)."""
    where = f"models.{model_name}"
    unknown = sorted(set(settings) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {REQUIRED_KEYS + OPTIONAL_KEYS}")
    for key in REQUIRED_KEYS:
        if key not in settings:
            raise UserError(f"{where}.{key}: missing")
    arch = settings["architecture"]
    if arch not in ARCHITECTURES:
        raise UserError(f"{where}.architecture: unknown {arch!r}; choose one of {ARCHITECTURES}")
    s = dict(settings)
    s["epochs"] = _int(s, "epochs", where, minimum=1)
    s["batch_size"] = _int(s, "batch_size", where, minimum=1)
    s["learning_rate"] = _positive_float(s, "learning_rate", where)
    s["weights"] = resolve_weights_name(s.get("weights") or DEFAULT_WEIGHTS[arch])
    s["patience"] = _int({"patience": s.get("patience", 3)}, "patience", where, minimum=0)
    s["class_weights"] = _bool(s, "class_weights", where, default=True)
    s["augment"] = _bool(s, "augment", where, default=DEFAULT_AUGMENT[arch])
    s["inject_failure"] = _bool(s, "inject_failure", where, default=False)
    s["jit_compile"] = _bool(s, "jit_compile", where, default=False)
    s["dropout"] = s.get("dropout")
    if s["dropout"] is not None and not (
        isinstance(s["dropout"], (int, float)) and 0 <= s["dropout"] <= MAX_DROPOUT
    ):
        raise UserError(f"{where}.dropout: must be in [0, {MAX_DROPOUT}], got {s['dropout']!r}")
    if arch == "resnet50_frozen" and s["augment"]:
        raise UserError(f"{where}.augment: resnet50_frozen trains on cached features; set false")
    s["warmup_epochs"] = _int({"warmup_epochs": s.get("warmup_epochs", 1)}, "warmup_epochs", where, minimum=0)
    if arch == "resnet50_finetune" and s["warmup_epochs"] >= s["epochs"]:
        raise UserError(
            f"{where}.warmup_epochs: {s['warmup_epochs']} leaves no fine-tune epoch of {s['epochs']}"
        )
    ft_lr = s.get("finetune_learning_rate")
    s["finetune_learning_rate"] = (
        s["learning_rate"] / 10 if ft_lr is None else _positive_float(s, "finetune_learning_rate", where)
    )
    return s


def _int(s: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = s[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where}.{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def _positive_float(s: Mapping[str, Any], key: str, where: str) -> float:
    value = s[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{where}.{key}: must be a number > 0, got {value!r}")
    return float(value)


def _bool(s: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = s.get(key)
    if value is None:  # absent or null (the config schema's default): the architecture's default
        value = default
    if not isinstance(value, bool):
        raise UserError(f"{where}.{key}: must be true or false, got {value!r}")
    return value


def class_weights_from_counts(
    class_counts: Mapping[int, int] | Sequence[int], num_classes: int
) -> dict[int, float]:
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


# --- runtime -----------------------------------------------------------------------------------


def configure_runtime(threads: int | None = None) -> tuple[tf.distribute.Strategy, dict[str, Any]]:
    """Pick device settings: GPU -> mixed precision (+ MirroredStrategy if >1 GPU);
    CPU -> ``threads`` intra-op threads and deterministic ops. Returns (strategy, device info)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
        return strategy, {
            "device": f"GPU x{len(gpus)}: {', '.join(sorted(set(names)))}",
            "mixed_precision": True,
            "deterministic": False,  # cuDNN autotuning is faster and not bit-reproducible
        }
    keras.mixed_precision.set_global_policy("float32")
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # TF already initialised in this process (tests): keep its pools
            log.debug("thread pools already fixed at %s", tf.config.threading.get_intra_op_parallelism_threads())
    # Same seed -> same history on CPU: forbid the nondeterministic kernels.
    tf.config.experimental.enable_op_determinism()
    intra = tf.config.threading.get_intra_op_parallelism_threads() or "all"
    return tf.distribute.get_strategy(), {
        "device": f"CPU ({intra} threads)",
        "mixed_precision": False,
        "deterministic": True,
    }


@contextlib.contextmanager
def _float32_policy():
    """Build the saved model in float32 so it runs anywhere (CPU float16 kernels are slow)."""
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


# --- resume bookkeeping ------------------------------------------------------------------------


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that continues the patience count of epochs run before a resume."""

    def __init__(self, prior_best: float | None, prior_wait: int, prior_best_epoch: int, **kwargs):
        super().__init__(**kwargs)
        self._prior = (prior_best, prior_wait, prior_best_epoch)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        best, wait, best_epoch = self._prior
        if best is not None:
            self.best, self.wait, self.best_epoch = best, wait, best_epoch


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_history(path: Path, rows: list[dict[str, str]]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _backed_up_epoch(backup_dir: Path) -> int:
    """Epochs finished according to a BackupAndRestore folder (0 if none)."""
    meta = backup_dir / "training_metadata.json"
    if not meta.is_file():
        return 0
    return int(json.loads(meta.read_text())["epoch"])


def _prior_val_state(rows: list[dict[str, str]]) -> tuple[float | None, int, int]:
    """(best val loss, epochs since it, its 0-based epoch) from history rows."""
    losses = [float(r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    if not losses:
        return None, 0, 0
    best_index = int(np.argmin(losses))
    return losses[best_index], len(losses) - 1 - best_index, int(rows[best_index]["epoch"])


class _Run:
    """Paths and resume state of one training run in ``out_dir``."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        # Epoch rows are appended to an undeclared file: Snakemake deletes a rerun job's declared
        # outputs (history.csv) before it starts, and a resumed run needs the earlier rows.
        self.history = self.out / "history.partial.csv"
        self.final_history = self.out / "history.csv"
        self.best = self.out / "checkpoints" / "best.keras"
        self.backup = self.out / "backup"
        self.tensorboard = self.out / "tensorboard"

    def start(self, resume_epoch: int) -> list[dict[str, str]]:
        """Keep history rows of finished epochs only (a kill can land between the CSV row and
        the backup); a fresh start clears stale outputs of an older run."""
        self.best.parent.mkdir(parents=True, exist_ok=True)
        if resume_epoch == 0:
            self.history.unlink(missing_ok=True)
            self.final_history.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
            shutil.rmtree(self.backup, ignore_errors=True)
            return []
        rows = [r for r in _read_history(self.history) if int(r["epoch"]) < resume_epoch]
        if len(rows) != resume_epoch:
            raise UserError(
                f"{self.history}: has {len(rows)} rows for {resume_epoch} backed-up epochs; "
                f"delete {self.backup} to train from scratch"
            )
        _write_history(self.history, rows)
        return rows

    def callbacks(self, backup_dir: Path, patience: int | None) -> list[keras.callbacks.Callback]:
        """Callbacks in ``on_epoch_end`` order: the CSV row lands before the backup, so a kill
        between them leaves a duplicate row (dropped on resume), never a gap."""
        rows = _read_history(self.history)
        best, wait, best_epoch = _prior_val_state(rows)
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.CSVLogger(str(self.history), append=bool(rows)),
            keras.callbacks.ModelCheckpoint(
                str(self.best), monitor="val_loss", save_best_only=True, initial_value_threshold=best
            ),
        ]
        # tensorboard is a pinned dependency (requirements.lock, envs/train.yaml).
        callbacks.append(
            keras.callbacks.TensorBoard(str(self.tensorboard), write_graph=False, profile_batch=0)
        )
        if patience is not None:
            callbacks.append(
                _ResumableEarlyStopping(
                    best, wait, best_epoch, monitor="val_loss", patience=patience, restore_best_weights=True
                )
            )
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True))
        return callbacks


# --- training ----------------------------------------------------------------------------------


def _compile(model: keras.Model, learning_rate: float, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        # Integer labels: same loss as categorical cross-entropy on one-hot labels.
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def _fit(model, run: _Run, train_ds, val_ds, *, phase_dir: Path, initial_epoch: int, epochs: int,
         patience: int | None, class_weight: dict[int, float] | None) -> None:
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
        counts += np.bincount(np.asarray(element[1]).ravel(), minlength=num_classes)[:num_classes]
    return counts


def _prepare(settings, model_name, out_dir, seed, threads):
    s = resolve_settings(settings, model_name)
    if s["inject_failure"]:
        raise RuntimeError(f"models.{model_name}.inject_failure is set: failing on purpose")
    strategy, device = configure_runtime(threads)
    keras.utils.set_random_seed(seed)
    return s, strategy, device, _Run(out_dir)


def _finish(run: _Run, final: keras.Model, info: dict[str, Any]) -> dict[str, Any]:
    final.save(run.out / "model.keras")
    rows = _read_history(run.history)
    _write_history(run.final_history, rows)
    run.history.unlink(missing_ok=True)
    best_val, _, best_epoch = _prior_val_state(rows)
    info.update(epochs_run=len(rows), best_epoch=best_epoch + 1 if rows else 0, best_val_loss=best_val)
    (run.out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("trained %s: %d epochs, best epoch %d", info["model"], info["epochs_run"], info["best_epoch"])
    return info


def _info(model_name, s, device, image_size, seed, num_train, num_val, resumed, class_weight):
    return {
        "model": model_name,
        "architecture": s["architecture"],
        "weights": weights_description(s["weights"]),
        "image_size": int(image_size),
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        **device,
        "resumed_from_epoch": resumed,
        "class_weights": {str(k): v for k, v in class_weight.items()} if class_weight else None,
        "settings": {k: v for k, v in s.items() if k != "inject_failure"},
    }


def train_model(
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    out_dir: str | Path,
    model_name: str,
    settings: Mapping[str, Any],
    num_classes: int,
    image_size: int,
    seed: int,
    class_counts: Mapping[int, int] | Sequence[int] | None = None,
    threads: int | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
) -> dict[str, Any]:
    """Train on batched ``(uint8 images, int labels)`` datasets; returns ``train_info``.

    Any architecture works on images (``resnet50_frozen`` then runs the frozen base every step;
    the workflow uses ``train_frozen_head`` on cached features instead). ``class_counts``
    (indexed by label) and ``num_train``/``num_val`` are counted from the data if not given.
    """
    s, strategy, device, run = _prepare(settings, model_name, out_dir, seed, threads)
    arch = s["architecture"]
    finetune = arch == "resnet50_finetune"
    warmup_dir, main_dir = run.backup / "warmup", run.backup / "main"
    warmup_done = run.backup / "warmup_done.weights.h5"

    if class_counts is None and (s["class_weights"] or num_train is None):
        class_counts = _count_labels(train_ds, num_classes)
    class_weight = class_weights_from_counts(class_counts, num_classes) if s["class_weights"] else None
    if num_train is None:
        num_train = int(sum(class_counts.values() if isinstance(class_counts, Mapping) else class_counts))
    if num_val is None:
        num_val = int(sum(int(tf.shape(e[1])[0]) for e in val_ds))

    # Resume point: the phase backup that exists tells how many epochs are finished.
    if _backed_up_epoch(main_dir):
        resume = _backed_up_epoch(main_dir)
    elif finetune and warmup_done.is_file():
        resume = s["warmup_epochs"]
    else:
        resume = _backed_up_epoch(warmup_dir) if finetune else 0
    run.start(resume)
    if resume:
        log.info("resuming %s after epoch %d", model_name, resume)

    with strategy.scope():  # weights are resolved here: offline ImageNet fails before training
        model = build_model(arch, num_classes, image_size, weights=s["weights"], dropout=s["dropout"], seed=seed)
    start = time.perf_counter()
    if finetune:
        if not warmup_done.is_file():
            with strategy.scope():
                _compile(model, s["learning_rate"], s["jit_compile"])
            _fit(model, run, train_ds, val_ds, phase_dir=warmup_dir, initial_epoch=0,
                 epochs=s["warmup_epochs"], patience=None, class_weight=class_weight)
            model.save_weights(warmup_done)
        else:
            model.load_weights(warmup_done)
        set_backbone_trainable(model, True)
        first_epoch, learning_rate = s["warmup_epochs"], s["finetune_learning_rate"]
    else:
        first_epoch, learning_rate = 0, s["learning_rate"]
    with strategy.scope():
        _compile(model, learning_rate, s["jit_compile"])
    _fit(model, run, train_ds, val_ds, phase_dir=main_dir, initial_epoch=first_epoch,
         epochs=s["epochs"], patience=s["patience"], class_weight=class_weight)
    seconds = time.perf_counter() - start

    best = keras.models.load_model(run.best, compile=False) if run.best.is_file() else model
    with _float32_policy():
        final = build_model(arch, num_classes, image_size, weights="none", dropout=s["dropout"], seed=seed)
    final.set_weights(best.get_weights())
    shutil.rmtree(run.backup, ignore_errors=True)
    info = _info(model_name, s, device, image_size, seed, num_train, num_val, resume, class_weight)
    info["train_seconds"] = round(seconds, 3)
    return _finish(run, final, info)


def _features_dataset(data: Mapping[str, np.ndarray], batch_size: int, shuffle: bool, seed: int):
    ds = tf.data.Dataset.from_tensor_slices(
        (np.asarray(data["features"], np.float32), np.asarray(data["labels"], np.int32))
    )
    if shuffle:
        ds = ds.shuffle(len(data["labels"]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_frozen_head(
    features_train: Mapping[str, np.ndarray],
    features_val: Mapping[str, np.ndarray],
    *,
    out_dir: str | Path,
    model_name: str,
    settings: Mapping[str, Any],
    num_classes: int,
    image_size: int,
    seed: int,
    class_counts: Mapping[int, int] | Sequence[int] | None = None,
    threads: int | None = None,
    shuffle: bool = True,
) -> dict[str, Any]:
    """Train the ``resnet50_frozen`` head on cached features (``extract_features`` output).

    The head never sees the base, so an epoch costs a few dense layers, not a ResNet50 pass.
    ``model.keras`` is still the full image model (base + trained head), like the others.
    ``checkpoints/best.keras`` holds the head alone.
    """
    s, strategy, device, run = _prepare(settings, model_name, out_dir, seed, threads)
    if s["architecture"] != "resnet50_frozen":
        raise UserError(f"models.{model_name}.architecture: feature training needs resnet50_frozen")
    for name, data in (("features_train", features_train), ("features_val", features_val)):
        labels = np.asarray(data["labels"])
        if len(labels) != len(data["features"]) or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
            raise UserError(f"{name}: labels do not match features or the {num_classes} classes")
    labels = np.asarray(features_train["labels"])
    if class_counts is None:
        class_counts = np.bincount(labels, minlength=num_classes)
    class_weight = class_weights_from_counts(class_counts, num_classes) if s["class_weights"] else None

    resume = _backed_up_epoch(run.backup / "main")
    run.start(resume)
    if resume:
        log.info("resuming %s after epoch %d", model_name, resume)
    with strategy.scope():
        head = dense_head(num_classes, s["dropout"] or 0.0, seed)
        _compile(head, s["learning_rate"], s["jit_compile"])
    train_ds = _features_dataset(features_train, s["batch_size"], shuffle, seed)
    val_ds = _features_dataset(features_val, s["batch_size"], False, seed)
    start = time.perf_counter()
    _fit(head, run, train_ds, val_ds, phase_dir=run.backup / "main", initial_epoch=0,
         epochs=s["epochs"], patience=s["patience"], class_weight=class_weight)
    seconds = time.perf_counter() - start

    best = keras.models.load_model(run.best, compile=False) if run.best.is_file() else head
    with _float32_policy():  # same weights and seed as extraction -> the same base
        final = build_model("resnet50_frozen", num_classes, image_size, weights=s["weights"],
                            dropout=s["dropout"], seed=seed)
    final.get_layer("head").set_weights(best.get_weights())
    shutil.rmtree(run.backup, ignore_errors=True)
    info = _info(model_name, s, device, image_size, seed, len(labels), len(features_val["labels"]),
                 resume, class_weight)
    info["train_seconds"] = round(seconds, 3)
    info["trained_on"] = "cached features"
    return _finish(run, final, info)


# --- workflow entry point ----------------------------------------------------------------------


def train_from_files(
    *,
    train_index: str | Path,
    val_index: str | Path,
    label_map: str | Path,
    split_report: str | Path,
    features: tuple[str | Path, str | Path] | None,
    out_dir: str | Path,
    model_name: str,
    settings: Mapping[str, Any],
    image_size: int,
    seed: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """What the ``train_model`` rule runs: read the split files, train, write ``out_dir``.

    ``features`` = (train.npz, val.npz) for ``resnet50_frozen`` (head trained on the cache).
    """
    s = resolve_settings(settings, model_name)
    classes = read_json(label_map, "label map").get("classes")
    if not classes:
        raise UserError(f"{label_map}: 'classes' missing or empty")
    train_counts = read_json(split_report, "split report").get("class_counts", {}).get("train")
    if train_counts is None:
        raise UserError(f"{split_report}: class_counts.train missing")
    unknown = sorted(set(train_counts) - set(classes))
    if unknown:
        raise UserError(f"{split_report}: class_counts.train has classes not in {label_map}: {unknown[:3]}")
    counts = [int(train_counts.get(name, 0)) for name in classes]
    common = dict(out_dir=out_dir, model_name=model_name, settings=settings, num_classes=len(classes),
                  image_size=image_size, seed=seed, class_counts=counts, threads=threads)
    if s["architecture"] == "resnet50_frozen":
        if not features:
            raise UserError(f"models.{model_name}: resnet50_frozen needs features_train/features_val inputs")
        from quiltflow.features import load_features

        train_f, val_f = (load_features(path, image_size=image_size) for path in features)
        for path, data in zip(features, (train_f, val_f)):
            # The saved model re-attaches a base with settings' weights: it must be the same base.
            if "weights" in data and str(data["weights"]) != weights_description(s["weights"]):
                raise UserError(f"{path}: extracted with weights {data['weights']}, "
                                f"models.{model_name}.weights is {weights_description(s['weights'])}")
        return train_frozen_head(train_f, val_f, **common)

    from quiltflow.data import make_dataset, num_examples

    train_ds = make_dataset(train_index, s["batch_size"], training=True, augment=s["augment"], seed=seed)
    val_ds = make_dataset(val_index, s["batch_size"], training=False)
    return train_model(train_ds, val_ds, num_train=num_examples(train_index),
                       num_val=num_examples(val_index), **common)
