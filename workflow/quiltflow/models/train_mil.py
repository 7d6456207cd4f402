"""Training of bag models (``Architecture.unit`` video: ``quiltflow.models.mil``) on cached features.

Same run layout and callbacks as every trainer (``quiltflow.models.train``): ``model.keras`` (the
bag model at its best validation epoch, float32), ``history.csv``, ``train_info.json``; early
stopping on the validation videos' loss restores the best weights; class weights count videos.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from quiltflow.core.errors import UserError
from quiltflow.core.settings import ModelSettings
from quiltflow.models.mil import BagBatches, Bags, FrameStatistics, bag_model, bag_weights
from quiltflow.models.resume import backed_up_epoch
from quiltflow.models.runtime import float32_policy
from quiltflow.models.train import (
    Targets,
    class_weight_for,
    compile_model,
    fit_phase,
    prepare_run,
    resolve_targets,
    run_info,
    start_run,
    wrap_up_run,
)


def build_bag_model(
    s: ModelSettings, num_classes: int, statistics: FrameStatistics, seed: int, task: str
) -> keras.Model:
    """The bag model of settings ``s`` (its registry entry names the pooling), standardising frames
    with ``statistics`` (of the training frames)."""
    return bag_model(
        s.spec.pooling,
        num_classes,
        len(statistics.mean),
        statistics=statistics,
        attention_dim=s.attention_dim,
        embed_dim=s.embed_dim,
        dropout=s.dropout,
        seed=seed,
        task=task,
    )


def train_bag_model(
    train: Bags,
    val: Bags,
    *,
    out_dir: str | Path,
    settings: ModelSettings,
    num_classes: int,
    image_size: int,
    seed: int,
    threads: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    targets: Targets | None = None,
) -> dict[str, Any]:
    """Train a bag model on videos ``train``, stop early on videos ``val``; returns train_info."""
    s = settings
    if s.spec.unit != "video":
        raise UserError(f"models.{s.name}.architecture: {s.architecture} is not a bag (video-level) model")
    strategy, device, run = prepare_run(s, out_dir, seed, threads)
    counts = train.label_counts(num_classes)
    targets = resolve_targets(s, targets or Targets(), counts, len(train))
    class_weight = class_weight_for(s, counts, num_classes, targets)
    resume = start_run(run, backed_up_epoch(run.backup / "main"), s.name)
    statistics = FrameStatistics.of(train)  # the training videos' frames only, never validation's
    with strategy.scope():
        model = build_bag_model(s, num_classes, statistics, seed, targets.task)
        compile_model(model, s.learning_rate, s.jit_compile, targets)
    weights = bag_weights(train, class_weight)
    train_batches = BagBatches(train, s.batch_size, max_frames=s.max_frames, seed=seed, bag_weights=weights)
    val_batches = BagBatches(val, s.batch_size)
    start = time.perf_counter()
    # Class weights ride in the batches (per bag), so fit gets none.
    fit_phase(
        model,
        run,
        train_batches,
        val_batches,
        phase_dir=run.backup / "main",
        initial_epoch=0,
        epochs=s.epochs,
        patience=s.patience,
        class_weight=None,
    )
    seconds = time.perf_counter() - start
    best = keras.models.load_model(run.best, compile=False) if run.best.is_file() else model
    with float32_policy():
        final = build_bag_model(s, num_classes, statistics, seed, targets.task)
    final.set_weights(best.get_weights())
    info = run_info(s, device, image_size, seed, len(train), len(val), resume, class_weight, seconds)
    info.update(
        trained_on="cached features",
        unit="video",
        num_train_frames=int(len(train.features)),
        num_val_frames=int(len(val.features)),
    )
    return wrap_up_run(run, final, info, targets, (final, _labelled(val_batches)), provenance)


def _labelled(batches: BagBatches):
    """(inputs, labels) of every batch: validation thresholds of a multi-label run."""
    return [batches[i][:2] for i in range(len(batches))]


# --- workflow entry point ----------------------------------------------------------------------


def read_groups(manifests: Sequence[str | Path]) -> dict[str, str]:
    """image_id -> group (video) of the split manifests."""
    parts = [pd.read_parquet(path, columns=["image_id", "group"]) for path in manifests]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["image_id", "group"])
    return dict(zip(table["image_id"].astype(str), table["group"].astype(str)))


def load_bags(feature_files: Sequence[str | Path], groups: Mapping[str, str], *, image_size: int, weights: str) -> Bags:
    """The frames of cached feature files as bags (videos) by the manifests' ``groups``;
    ``weights``: the description the features must have been extracted with."""
    from quiltflow.models.builders import weights_description
    from quiltflow.models.features import load_features

    parts = []
    for path in feature_files:
        data = load_features(path, image_size=image_size)
        if "weights" in data and str(data["weights"]) != weights_description(weights):
            raise UserError(
                f"{path}: extracted with weights {data['weights']}, expected {weights_description(weights)}"
            )
        missing = [i for i in data["ids"].astype(str) if i not in groups]
        if missing:
            raise UserError(f"{path}: image_id {missing[0]} has no row in the split manifests")
        parts.append(data)
    ids = np.concatenate([p["ids"].astype(str) for p in parts])
    return Bags.from_frames(
        np.concatenate([p["features"] for p in parts]),
        np.concatenate([p["labels"] for p in parts]),
        ids,
        np.array([groups[i] for i in ids]),
        where=", ".join(str(f) for f in feature_files),
    )


def train_bags_from_files(
    *,
    features: tuple[Sequence[str | Path], Sequence[str | Path]],
    manifests: tuple[Sequence[str | Path], Sequence[str | Path]],
    label_map: str | Path,
    out_dir: str | Path,
    settings: ModelSettings,
    image_size: int,
    seed: int,
    threads: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What rule train_model runs for a bag model: (train, val) feature files and split manifests
    (their ``group`` column makes the videos) -> a trained run in ``out_dir``."""
    from quiltflow.core.jsonio import read_label_map
    from quiltflow.core.tasks import read_task

    classes = read_label_map(label_map)
    groups = read_groups([*manifests[0], *manifests[1]])
    train, val = (load_bags(files, groups, image_size=image_size, weights=settings.weights) for files in features)
    return train_bag_model(
        train,
        val,
        out_dir=out_dir,
        settings=settings,
        num_classes=len(classes),
        image_size=image_size,
        seed=seed,
        threads=threads,
        provenance=provenance,
        targets=Targets(read_task(label_map), tuple(classes)),
    )
