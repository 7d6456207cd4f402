"""Prediction on new videos with a bag model (issue 27; rule predict_videos, and notebooks).

A bag model (``abmil``, ``meanmil``) predicts a video from the frozen features of all its frames.
New frames go through exactly what its training frames went through: the shards' preparation
(``predict.prepare_pixels``: framing, resize, JPEG round trip, the shard stage's skip reasons),
then ``models.features.extract_features`` with the representation's extractor and the weights
the run recorded (``train_info.json`` ``weights_source``: the value ``load_bags`` checked its
feature cache against), then the bag model on every readable frame of the video at once.

Videos: the first-level sub-folders of a folder (every image below one belongs to it), or the
``group`` column of a CSV/Parquet listing. Results: one row per video (``video_table``) and one
per listed frame (``frame_table``: its status and its attention within its video). Nothing is
dropped: an unreadable frame keeps the shard stage's reason, a frame outside any video is
``no_video``, a video folder without images is ``empty``, a video without a readable frame
``no_readable_frames``; the counts reconcile (``check_counts``). With several runs (folds,
seeds) probabilities and attention are averaged over the runs, as frame prediction averages.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, read_label_map
from quiltflow.core.settings import ShardSettings
from quiltflow.core.tasks import MULTILABEL, read_task
from quiltflow.data.images import MAX_PIXELS, BadImage
from quiltflow.evaluation.predict import (
    FOLDER,
    OK,
    PATH_COLUMN,
    check_head,
    label_columns,
    list_folder,
    load_models,
    prepared_chunks,
    read_table,
    run_labels,
    run_shard_settings,
    run_thresholds,
    source_kind,
    table_paths,
    train_info_paths_of,
    write_renamed,
    write_tables,
)

log = logging.getLogger("quiltflow.evaluation.predict_videos")

GROUP_COLUMN = "group"
# Statuses beyond the shard stage's skip reasons.
NO_VIDEO = "no_video"  # a frame outside any video (loose in the folder, or an empty group cell)
EMPTY = "empty"  # a video folder without images
NO_READABLE_FRAMES = "no_readable_frames"  # a video whose every frame was skipped


# ------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class VideoListing:
    """The frames of ``predict.images`` by video: ``paths`` in listing order, each one's video in
    ``groups`` (None: in no video), and ``empty_videos``: video folders without an image."""

    paths: list[str]
    groups: list[str | None]
    empty_videos: list[str]

    def videos(self) -> list[str]:
        """Every video once, sorted: those with frames and the empty ones."""
        return sorted({g for g in self.groups if g is not None} | set(self.empty_videos))


def list_videos(source: str | os.PathLike) -> VideoListing:
    """The videos of ``predict.images``: a folder's first-level sub-folders (searched recursively),
    or a CSV/Parquet with ``path`` and ``group`` columns (rows in order)."""
    source = Path(source)
    kind = source_kind(source)
    if kind == FOLDER:
        return _folder_videos(source)
    table = read_table(source, kind, (PATH_COLUMN, GROUP_COLUMN))
    groups = [None if pd.isna(g) or str(g) == "" else str(g) for g in table[GROUP_COLUMN]]
    return VideoListing(table_paths(table, source), groups, [])


def _folder_videos(root: Path) -> VideoListing:
    paths = list_folder(root)
    groups = [_video_of(Path(p), root) for p in paths]
    found = {g for g in groups if g is not None}
    # Hidden folders are skipped as list_folder skips hidden files.
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    empty = [name for name in folders if name not in found]
    loose = sum(g is None for g in groups)
    log.info("%s: %d video folders (%d without images), %d images outside them", root, len(folders), len(empty), loose)
    return VideoListing(paths, groups, empty)


def _video_of(path: Path, root: Path) -> str | None:
    """The first-level sub-folder of ``root`` that holds ``path`` (None: directly in ``root``)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


# ------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class Extraction:
    """How a run's frame features were computed (rule extract_features): the representation's
    extractor architecture, its weights (as resolved for the run), the image size and the seed of
    random weights (``config.seed``)."""

    architecture: str
    weights: str
    image_size: int
    seed: int

    @classmethod
    def of_run(cls, info: Mapping[str, Any], image_size: int, seed: int) -> Extraction:
        from quiltflow.dag.representations import representation_of

        if "weights_source" not in info or "architecture" not in info:
            raise UserError(f"train_info of {info.get('model')}: no weights_source/architecture (retrain the model)")
        weights = str(info["weights_source"])
        return cls(representation_of(str(info["architecture"]), weights).architecture, weights, image_size, seed)


@dataclass(frozen=True)
class FrameFeatures:
    """Features of the readable frames: ``features`` [views, D], ``frame_of_view`` [views] (the
    listing row each view belongs to; a grid image has several) and every frame's ``outcome``
    (None: read, else its BadImage)."""

    features: np.ndarray
    frame_of_view: np.ndarray
    outcomes: list[BadImage | None]


def frame_features(
    paths: Sequence[str],
    settings: ShardSettings,
    extraction: Extraction,
    *,
    skip: Sequence[bool] = (),
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    threads: int = 1,
) -> FrameFeatures:
    """Prepare every path (except where ``skip``) as the shards were and run the frozen extractor
    of ``extraction`` over the readable ones (``extract_features``, the rule's own code)."""
    import tensorflow as tf

    from quiltflow.models.features import extract_features

    todo = [k for k in range(len(paths)) if not (skip and skip[k])]
    outcomes: list[BadImage | None] = [None] * len(paths)
    views, size = settings.records_per_image, settings.image_size
    chunk = max(1, int(batch_size) // views)

    def batches():  # outcomes are filled in as the extractor consumes the batches
        for start, prepared in zip(
            range(0, len(todo), chunk), prepared_chunks([paths[k] for k in todo], settings, max_pixels, chunk, threads)
        ):
            rows = todo[start : start + len(prepared)]
            good = [(row, p) for row, p in zip(rows, prepared) if not isinstance(p, BadImage)]
            for row, p in zip(rows, prepared):
                outcomes[row] = p if isinstance(p, BadImage) else None
            if good:
                ids = np.repeat([str(row) for row, _ in good], views)
                yield np.concatenate([p for _, p in good]), np.zeros(len(ids), np.int32), ids

    signature = (
        tf.TensorSpec((None, size, size, 3), tf.uint8),
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None,), tf.string),
    )
    data = extract_features(
        tf.data.Dataset.from_generator(batches, output_signature=signature),
        image_size=extraction.image_size,
        weights=extraction.weights,
        batch_size=batch_size,
        seed=extraction.seed,
        architecture=extraction.architecture,
    )
    return FrameFeatures(data["features"], data["ids"].astype(np.int64), outcomes)


# ------------------------------------------------------------------------------ the bag model


@dataclass(frozen=True)
class VideoScores:
    """A bag model's (mean over its runs) probabilities [videos, classes] of ``videos`` (those with
    a readable frame) and each listed frame's attention within its video (NaN: not in a bag)."""

    videos: list[str]
    probs: np.ndarray
    attention: np.ndarray


def score_videos(
    model: Any, features: FrameFeatures, groups: Sequence[str | None], *, task: str, batch_size: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(videos, probabilities [videos, classes], per-frame attention [frames]) of one run: every
    readable frame of a video in one bag; a grid image's attention is the sum over its cells."""
    from quiltflow.evaluation.evaluate import as_probabilities
    from quiltflow.models.mil import Bags, predict_bags

    width = next(int(t.shape[-1]) for t in model.inputs if len(t.shape) == 3)
    if features.features.shape[1] != width:
        raise UserError(
            f"model {model.name}: expects {width} features per frame, the representation gives "
            f"{features.features.shape[1]} (train_info.json names another representation?)"
        )
    attention = np.full(len(groups), np.nan)
    if len(features.frame_of_view) == 0:
        return [], np.zeros((0, model.output_shape[-1])), attention
    view_groups = np.array([groups[row] for row in features.frame_of_view])
    ids = np.arange(len(view_groups)).astype(str)
    bags = Bags.from_frames(features.features, np.zeros(len(ids), np.int32), ids, view_groups, where="predict")
    probs, weights = predict_bags(model, bags, int(batch_size))
    per_view = np.zeros(len(ids))
    for members, values in zip(bags.members, weights):
        per_view[members] = values
    attention[np.unique(features.frame_of_view)] = 0.0
    np.add.at(attention, features.frame_of_view, per_view)
    return [str(g) for g in bags.groups], as_probabilities(probs, model.name, task), attention


def average_runs(runs: Sequence[tuple[list[str], np.ndarray, np.ndarray]]) -> VideoScores:
    """Every run's scores averaged (runs see the same readable frames, so the same videos)."""
    videos = sorted(runs[0][0])
    probs = [p[[names.index(v) for v in videos]] if videos else p for names, p, _ in runs]
    return VideoScores(videos, np.mean(probs, axis=0), np.mean([a for _, _, a in runs], axis=0))


# ------------------------------------------------------------------------------ the tables


def top_frames(paths: Sequence[str], attention: Sequence[float], k: int) -> list[dict[str, Any]]:
    """The ``k`` most attended frames, most attended first (ties: path order); NaN ones never."""
    values = np.asarray(attention, np.float64)
    rows = [i for i in np.lexsort((np.asarray(paths, dtype=str), -values)) if np.isfinite(values[i])]
    return [{"path": str(paths[i]), "attention": round(float(values[i]), 6)} for i in rows[: max(0, int(k))]]


def frame_table(listing: VideoListing, outcomes: Sequence[BadImage | None], attention: np.ndarray) -> pd.DataFrame:
    """One row per listed frame: path, group, status (ok, a skip reason, no_video), detail, its
    attention within its video (NaN when skipped) and its rank there (1 = most attended)."""
    status = [NO_VIDEO if g is None else (o.reason if o is not None else OK) for g, o in zip(listing.groups, outcomes)]
    detail = [
        "not inside a video (a sub-folder of predict.images, or a group)" if g is None else (o.detail if o else "")
        for g, o in zip(listing.groups, outcomes)
    ]
    table = pd.DataFrame(
        {
            "path": pd.array(listing.paths, dtype="string"),
            "group": pd.array(listing.groups, dtype="string"),
            "status": status,
            "detail": detail,
            "attention": np.asarray(attention, np.float64).astype(np.float32),
        }
    )
    ranks = table.assign(order=-table["attention"]).groupby("group")["order"].rank(method="first")
    return table.assign(rank=pd.array(ranks.round(), dtype="Int32"))


def video_table(
    listing: VideoListing,
    frames: pd.DataFrame,
    scores: VideoScores,
    class_names: Sequence[str],
    task: str,
    thresholds: np.ndarray | None,
    k: int,
) -> pd.DataFrame:
    """One row per video (sorted): group, status (ok, empty, no_readable_frames), detail,
    n_frames (listed), n_skipped, the frame prediction's label columns, and ``top_frames`` (JSON:
    the k most attended frames, ``[{"path", "attention"}]``)."""
    videos = listing.videos()
    per_video = frames[frames["group"].notna()].groupby("group")
    listed = per_video.size().reindex(videos, fill_value=0)
    ok = frames[frames["status"] == OK].groupby("group").size().reindex(videos, fill_value=0)
    status = [OK if ok[v] else (EMPTY if listed[v] == 0 else NO_READABLE_FRAMES) for v in videos]
    detail = {
        EMPTY: "no image in the video folder",
        NO_READABLE_FRAMES: "every frame was skipped (see the frame table)",
    }
    probs = np.full((len(videos), len(class_names)), np.nan)
    index = {v: i for i, v in enumerate(scores.videos)}
    for row, video in enumerate(videos):
        if video in index:
            probs[row] = scores.probs[index[video]]
    tops = [_top_json(per_video.get_group(v), k) if s == OK else "[]" for v, s in zip(videos, status)]
    table = pd.DataFrame(
        {
            "group": pd.array(videos, dtype="string"),
            "status": status,
            "detail": [detail.get(s, "") for s in status],
            "n_frames": listed.to_numpy(np.int32),
            "n_skipped": (listed - ok).to_numpy(np.int32),
        }
    )
    return table.assign(**label_columns(probs, class_names, task, thresholds), top_frames=tops)


def _top_json(frames: pd.DataFrame, k: int) -> str:
    return json.dumps(top_frames(frames["path"].tolist(), frames["attention"].to_numpy(), k))


def check_counts(videos: pd.DataFrame, frames: pd.DataFrame) -> dict[str, Any]:
    """The counts of both tables, checked against each other: every listed frame is once in the
    frame table; those in a video add up to the videos' n_frames, the skipped ones to n_skipped."""
    in_video = frames[frames["group"].notna()]
    if int(videos["n_frames"].sum()) != len(in_video):
        raise AssertionError("video n_frames do not add up to the frames listed in videos")
    if int(videos["n_skipped"].sum()) != int((in_video["status"] != OK).sum()):
        raise AssertionError("video n_skipped do not add up to the skipped frames")
    return {
        "videos": dict(sorted(Counter(videos["status"]).items())),
        "frames": dict(sorted(Counter(frames["status"]).items())),
    }


# ------------------------------------------------------------------------------ entry points


def predict_video_paths(
    model_path: str | os.PathLike | Sequence[str | os.PathLike],
    listing: VideoListing,
    *,
    seed: int,
    top_k: int,
    settings: ShardSettings | None = None,
    class_names: Sequence[str] | None = None,
    task: str | None = None,
    thresholds: np.ndarray | None = None,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    threads: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per video, one row per frame) of a bag model's runs (``model.keras`` files, their
    ``train_info.json`` beside them) on ``listing``. ``seed``: the run's ``config.seed`` (the random
    weights of a ``weights: none`` representation); ``top_k``: frames in ``top_frames``
    (``predict.top_frames``). ``settings``, ``class_names``, ``task`` and a
    multi-label model's ``thresholds`` default to the run's, as in ``predict.predict_paths``."""
    import quiltflow.models.mil  # noqa: F401  (registers the pooling layers for deserialisation)

    paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    settings = settings or run_shard_settings(paths[0])
    class_names, task = run_labels(paths[0], class_names, task)
    if task == MULTILABEL and thresholds is None:
        thresholds = run_thresholds(train_info_paths_of(paths), class_names)
    models = load_models(paths)
    for model in models:
        check_head(model, len(class_names), task)
    infos = [read_json(p, "train info") for p in train_info_paths_of(paths)]
    skip = [g is None for g in listing.groups]
    cache: dict[Extraction, FrameFeatures] = {}  # runs on one representation share its features
    runs = []
    for model, info in zip(models, infos):
        extraction = Extraction.of_run(info, settings.image_size, seed)
        if extraction not in cache:
            log.info("features of %d frames: %s", len(skip) - sum(skip), extraction)
            cache[extraction] = frame_features(
                listing.paths,
                settings,
                extraction,
                skip=skip,
                batch_size=batch_size,
                max_pixels=max_pixels,
                threads=threads,
            )
        runs.append(score_videos(model, cache[extraction], listing.groups, task=task, batch_size=batch_size))
    scores = average_runs(runs)
    frames = frame_table(listing, next(iter(cache.values())).outcomes, scores.attention)
    return video_table(listing, frames, scores, class_names, task, thresholds, top_k), frames


def predict_videos(
    *,
    model_paths: Sequence[str | os.PathLike],
    images: str | os.PathLike,
    label_map_path: str | os.PathLike,
    settings: ShardSettings,
    seed: int,
    parquet_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    attention_path: str | os.PathLike,
    top_k: int,
    train_info_paths: Sequence[str | os.PathLike] | None = None,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    threads: int = 1,
) -> pd.DataFrame:
    """Rule predict_videos: list the videos of ``images``, predict them with every run of one bag
    model, write the video tables (Parquet, CSV) and the frame table (``attention_path``)."""
    from quiltflow.models.runtime import set_thread_pools

    set_thread_pools(max(1, int(threads)))  # before TensorFlow runs anything
    class_names, task = read_label_map(label_map_path), read_task(label_map_path)
    thresholds = None
    if task == MULTILABEL:
        infos = train_info_paths_of(model_paths) if train_info_paths is None else list(train_info_paths)
        thresholds = run_thresholds(infos, class_names)
    listing = list_videos(images)
    log.info("%d videos, %d frames from %s; task %s", len(listing.videos()), len(listing.paths), images, task)
    videos, frames = predict_video_paths(
        model_paths,
        listing,
        seed=seed,
        settings=settings,
        class_names=class_names,
        task=task,
        thresholds=thresholds,
        top_k=top_k,
        batch_size=batch_size,
        max_pixels=max_pixels,
        threads=threads,
    )
    counts = check_counts(videos, frames)
    write_tables(videos, Path(parquet_path), Path(csv_path))
    write_renamed(Path(attention_path), frames.to_parquet)
    log.info("wrote %s, %s and %s: %s", parquet_path, csv_path, attention_path, counts)
    return videos
