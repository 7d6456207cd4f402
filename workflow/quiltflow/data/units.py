"""The unit of a split: a video, or several videos joined by near-duplicate frames.

Every image keeps its original video in ``video``; ``group`` is its *unit*. Without
near-duplicates a unit is one video. A near-duplicate cluster (a frame reused across videos)
links the videos of all its members: union-find over videos, so every frame of every linked
video takes the component's group (its smallest video id). Moving only the clustered frames
would split their videos between units, and so between train and test (issue 23).

Two invariants are checked on every run, not only in tests:

* after filtering, each video lies in exactly one group (:func:`check_one_group_per_video`);
* after splitting, each group and each video lies in exactly one bucket
  (:func:`check_one_bucket_per_video`).

A violation stops the run with one line naming the video.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quiltflow.core.errors import UserError
from quiltflow.data.neardup import union_find


@dataclass(frozen=True)
class UnitMerge:
    """How near-duplicate clusters joined videos into units (the filter report's counts)."""

    videos: int  # distinct videos before joining
    units: int  # distinct groups after joining
    groups_merged: int  # videos that were joined into a unit of two or more videos
    largest_unit_videos: int
    largest_unit_images: int


def join_videos(video: pd.Series, cluster: np.ndarray) -> tuple[pd.Series, UnitMerge]:
    """(group per row, counts): rows whose images share a near-duplicate ``cluster`` id link
    their videos; every row of a linked video gets the smallest video id of its component."""
    code, names = pd.factorize(video.astype(str), sort=True)  # code order = name order
    root_row = _first_row_of_cluster(cluster)
    component = union_find(len(names), code, code[root_row])  # root = smallest code = smallest name
    group = pd.Series(np.asarray(names, dtype=object)[component[code]], index=video.index, dtype=object)
    videos_per_unit = np.bincount(component, minlength=len(names))
    images_per_unit = np.bincount(component[code], minlength=len(names))
    merge = UnitMerge(
        videos=len(names),
        units=int((videos_per_unit > 0).sum()),
        groups_merged=int((videos_per_unit[component] > 1).sum()),
        largest_unit_videos=int(videos_per_unit.max()) if len(names) else 0,
        largest_unit_images=int(images_per_unit.max()) if len(names) else 0,
    )
    return group, merge


def _first_row_of_cluster(cluster: np.ndarray) -> np.ndarray:
    """For each row, the first row carrying the same cluster id."""
    _, first, inverse = np.unique(cluster, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


def check_one_group_per_video(table: pd.DataFrame) -> None:
    """Stop when a video's frames carry two groups (they could land in two splits)."""
    groups = table.groupby("video", sort=True)["group"].nunique()
    split = groups[groups > 1]
    if len(split):
        video = split.index[0]
        found = sorted(table.loc[table["video"] == video, "group"].unique())
        raise UserError(
            f"video {video!r} has frames in {len(found)} groups {found[:3]}: a video must be one unit "
            f"({len(split)} video(s) affected)"
        )


def check_one_bucket_per_video(manifests: Mapping[str, pd.DataFrame]) -> None:
    """Stop when a group or a video has images in two buckets (splits or folds)."""
    parts = [m[["video", "group"]].assign(bucket=name) for name, m in manifests.items()]
    table = pd.concat(parts, ignore_index=True)
    for column in ("group", "video"):
        buckets = table.groupby(column, sort=True)["bucket"].nunique()
        spread = buckets[buckets > 1]
        if len(spread):
            unit = spread.index[0]
            found = sorted(table.loc[table[column] == unit, "bucket"].unique())
            raise UserError(
                f"{column} {unit!r} has images in buckets {found}: a {column} must lie in one split "
                f"({len(spread)} {column}(s) affected)"
            )
