"""Prediction on new videos with a bag model (issue 27): video grouping of a folder or a table,
the top-attended frames, the one-row-per-video table and its counts, and a tiny bag model on a
folder of video sub-folders (bad and empty inputs counted). The real run: test_mil_multilabel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from quiltflow.core.errors import UserError
from quiltflow.core.tasks import MULTICLASS, MULTILABEL
from quiltflow.data.images import BadImage
from quiltflow.evaluation.predict_videos import (
    EMPTY,
    NO_READABLE_FRAMES,
    NO_VIDEO,
    VideoListing,
    VideoScores,
    check_counts,
    frame_table,
    list_videos,
    top_frames,
    video_table,
)
from support import he_like, make_bad_files

CLASSES = ["Breast", "Lung", "Renal"]


def jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(he_like(48, 40, seed=seed)).save(path, "JPEG", quality=90)
    return path


def test_a_folders_first_level_sub_folders_are_its_videos(tmp_path):
    root = tmp_path / "videos"
    a1, a2 = jpeg(root / "vid_a" / "f1.jpg"), jpeg(root / "vid_a" / "deeper" / "f2.jpg")
    b1 = jpeg(root / "vid_b" / "f1.jpg")
    loose = jpeg(root / "loose.jpg")
    (root / "vid_empty").mkdir()
    (root / ".hidden").mkdir()
    (root / "vid_b" / "notes.txt").write_text("not an image")
    listing = list_videos(root)
    by_path = dict(zip(listing.paths, listing.groups))
    assert by_path == {str(a2): "vid_a", str(a1): "vid_a", str(b1): "vid_b", str(loose): None}
    assert listing.empty_videos == ["vid_empty"]
    assert listing.videos() == ["vid_a", "vid_b", "vid_empty"]


def test_a_table_names_each_frames_video_in_its_group_column(tmp_path):
    jpeg(tmp_path / "x.jpg")
    table = tmp_path / "frames.csv"
    pd.DataFrame({"path": ["x.jpg", "/abs/y.jpg", "z.jpg"], "group": ["v1", "v1", ""]}).to_csv(table, index=False)
    listing = list_videos(table)
    assert listing.paths == [str(tmp_path / "x.jpg"), "/abs/y.jpg", str(tmp_path / "z.jpg")]
    assert listing.groups == ["v1", "v1", None] and listing.empty_videos == []
    pd.DataFrame({"path": ["x.jpg"]}).to_parquet(tmp_path / "no_group.parquet")
    with pytest.raises(UserError, match="has no column 'group'"):
        list_videos(tmp_path / "no_group.parquet")


def test_top_frames_are_the_k_most_attended_ties_in_path_order():
    paths = ["d.jpg", "c.jpg", "b.jpg", "a.jpg", "e.jpg"]
    attention = [0.1, 0.3, 0.3, 0.3, np.nan]  # e was skipped: never listed
    assert top_frames(paths, attention, 2) == [
        {"path": "a.jpg", "attention": 0.3},
        {"path": "b.jpg", "attention": 0.3},
    ]
    assert [f["path"] for f in top_frames(paths, attention, 10)] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert top_frames(paths, attention, 0) == []


def _listing_and_scores():
    """Video v1: three frames, one unreadable; v2: one frame, unreadable; v3: an empty folder;
    one frame outside any video."""
    listing = VideoListing(["v1/a", "v1/b", "v1/c", "v2/a", "loose"], ["v1", "v1", "v1", "v2", None], ["v3"])
    outcomes = [None, BadImage("corrupt", "broken"), None, BadImage("missing", "gone"), None]
    scores = VideoScores(["v1"], np.array([[0.2, 0.5, 0.3]]), np.array([0.25, np.nan, 0.75, np.nan, np.nan]))
    return listing, outcomes, scores


def test_one_row_per_video_with_its_counts_label_and_top_frames():
    listing, outcomes, scores = _listing_and_scores()
    frames = frame_table(listing, outcomes, scores.attention)
    assert frames["status"].tolist() == ["ok", "corrupt", "ok", "missing", NO_VIDEO]
    assert frames["rank"].tolist()[:3] == [2, pd.NA, 1]
    videos = video_table(listing, frames, scores, CLASSES, MULTICLASS, None, 1)
    assert videos["group"].tolist() == ["v1", "v2", "v3"]
    assert videos["status"].tolist() == ["ok", NO_READABLE_FRAMES, EMPTY]
    assert videos["n_frames"].tolist() == [3, 1, 0] and videos["n_skipped"].tolist() == [1, 1, 0]
    assert videos["pred_label"].tolist()[0] == "Lung" and videos["pred_label"].isna().tolist() == [False, True, True]
    assert videos.loc[0, ["prob_Breast", "prob_Lung", "prob_Renal"]].tolist() == pytest.approx([0.2, 0.5, 0.3])
    assert json.loads(videos.loc[0, "top_frames"]) == [{"path": "v1/c", "attention": 0.75}]
    assert videos["top_frames"].tolist()[1:] == ["[]", "[]"]
    counts = check_counts(videos, frames)  # n_frames and n_skipped reconcile with the frame rows
    assert counts == {
        "videos": {EMPTY: 1, NO_READABLE_FRAMES: 1, "ok": 1},
        "frames": {"corrupt": 1, "missing": 1, NO_VIDEO: 1, "ok": 2},
    }


def test_multilabel_videos_get_thresholded_labels():
    listing, outcomes, scores = _listing_and_scores()
    frames = frame_table(listing, outcomes, scores.attention)
    videos = video_table(listing, frames, scores, CLASSES, MULTILABEL, np.array([0.1, 0.6, 0.3]), 3)
    assert videos["pred_labels"].tolist()[0] == "Breast|Renal" and videos["n_pred_labels"].tolist()[0] == 2
    assert videos["pred_labels"].isna().tolist() == [False, True, True]


@pytest.fixture(scope="module")
def tiny_bag_run(tmp_path_factory):
    """A random abmil (3 classes) on random-ResNet50 features at 32 px, saved as a run's files."""
    import keras
    from quiltflow.models.mil import bag_model

    folder = tmp_path_factory.mktemp("bag") / "abmil"
    folder.mkdir()
    keras.utils.set_random_seed(0)
    model = bag_model("attention", len(CLASSES), 2048, embed_dim=16, attention_dim=8)
    model.save(folder / "model.keras")
    info = {"model": "abmil", "architecture": "abmil", "weights_source": "none", "image_size": 32}
    (folder / "train_info.json").write_text(json.dumps(info))
    return folder / "model.keras"


def test_a_bag_model_predicts_each_video_of_a_folder_once(tiny_bag_run, tmp_path):
    from quiltflow.core.settings import ShardSettings
    from quiltflow.evaluation.predict_videos import predict_video_paths

    root = tmp_path / "videos"
    for k in range(3):
        jpeg(root / "vid_a" / f"f{k}.jpg", seed=k)
    jpeg(root / "vid_b" / "f0.jpg", seed=9)
    make_bad_files(root / "vid_b")  # files of every broken kind, in vid_b/bad/
    (root / "vid_empty").mkdir()
    settings = ShardSettings.from_config({"jpeg_quality": 90, "framing": "center_crop", "grid_size": 2}, image_size=32)
    listing = list_videos(root)
    bad = [p for p in listing.paths if "/bad/" in p]
    assert len(bad) == 6  # the listed ones: a missing file or a directory is never listed
    run = dict(seed=0, top_k=2, settings=settings, class_names=CLASSES, task=MULTICLASS, batch_size=4)
    videos, frames = predict_video_paths(tiny_bag_run, listing, **run)
    assert videos["group"].tolist() == ["vid_a", "vid_b", "vid_empty"]
    assert videos["status"].tolist() == ["ok", "ok", EMPTY]
    assert videos["n_frames"].tolist() == [3, 1 + len(bad), 0] and videos["n_skipped"].tolist()[:2] == [0, len(bad)]
    probs = videos[[f"prob_{c}" for c in CLASSES]].to_numpy()[:2]
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    sums = frames[frames["status"] == "ok"].groupby("group")["attention"].sum()
    assert np.allclose(sums.to_numpy(), 1, atol=1e-5)  # attention sums to 1 within each video
    assert len(json.loads(videos.loc[0, "top_frames"])) == 2
    check_counts(videos, frames)
    # The video without its unreadable frames gets the same prediction: skipped frames are not in its bag.
    alone = VideoListing([str(root / "vid_b" / "f0.jpg")], ["vid_b"], [])
    again, _ = predict_video_paths(tiny_bag_run, alone, **run)
    assert again[[f"prob_{c}" for c in CLASSES]].to_numpy()[0] == pytest.approx(probs[1], abs=1e-6)
