"""pretraining pool: unlabeled: frames removed for their label join a pool, never across the
leakage rule (a frame whose video or near-duplicate unit touches a held-out video of the fold)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from quiltflow.core.cv import UNLABELED, buckets, run_buckets, unlabeled_bucket, unlabeled_buckets
from quiltflow.core.errors import UserError
from quiltflow.core.settings import FilterSettings
from quiltflow.dag.config import validate_config
from quiltflow.dag.pretraining import describe, pool_buckets, provenance
from quiltflow.data.metadata import LABEL_REASONS, label_removed_images
from quiltflow.data.unlabeled import NEAR_DUPLICATE, SPANS_BUCKETS, assign_pool_buckets, fold_facts, split_unlabeled
from quiltflow.records.shard_index import load_index
from quiltflow.records.tfrecord_io import decode_example, iter_records
from support import touch, vid_name, write_lookup
from workflow_runner import copy_workflow, planned_jobs, rules_of, snakemake

# --- the leakage rule on a hand-made table (3 folds) --------------------------------------------

# Labelled frames: two per video; vA in fold0a (test of fold 0, val of fold 2), vB in fold1a (val of
# fold 0, test of fold 1), vC in fold1b, vD in fold2b.
KEPT = pd.DataFrame(
    {
        "image_id": [f"{v}{i}.jpg" for v in ("vA", "vB", "vC", "vD") for i in (1, 2)],
        "video": [v for v in ("vA", "vB", "vC", "vD") for _ in (1, 2)],
        "bucket": [b for b in ("fold0a", "fold1a", "fold1b", "fold2b") for _ in (1, 2)],
    }
)
# Unlabeled frames: one of video vA; one of its own video, a near-duplicate of a frame of vB; one
# alone; one a near-duplicate of frames of vC and vD (its unit spans two buckets).
CANDIDATES = pd.DataFrame(
    {
        "image_id": ["u_video.jpg", "u_neardup.jpg", "u_free.jpg", "u_span.jpg"],
        "video": ["vA", "vX", "vY", "vZ"],
    }
)
# Near-duplicate clusters of KEPT's rows then CANDIDATES' rows (smallest member's index).
ROOT = np.array([0, 1, 2, 3, 4, 5, 4, 7, 8, 3, 10, 4])


def _pools(frames: pd.DataFrame, folds: int = 3) -> dict[int, set[str]]:
    pools = {}
    for fold in range(folds):
        chosen = frames["pool_bucket"].isin(pool_buckets("unlabeled", fold, folds))
        pools[fold] = set(frames.loc[chosen, "image_id"])
    return pools


def test_a_frame_of_a_held_out_video_or_unit_is_left_out_of_that_folds_pool_only():
    frames = assign_pool_buckets(KEPT, CANDIDATES, ROOT, "group")
    assert frames.set_index("image_id")["pool_bucket"].fillna("none").to_dict() == {
        "u_video.jpg": unlabeled_bucket("fold0a"),
        "u_neardup.jpg": unlabeled_bucket("fold1a"),
        "u_free.jpg": UNLABELED,
        "u_span.jpg": "none",
    }
    assert frames.set_index("image_id").loc["u_span.jpg", "excluded"] == SPANS_BUCKETS
    pools = _pools(frames)
    # Fold 0 tests on vA and validates on vB: both frames are out; each is in another fold's pool.
    assert pools[0] == {"u_free.jpg"}
    assert pools[1] == {"u_video.jpg", "u_free.jpg"}  # fold 1 trains on fold0a, tests on fold1a
    assert pools[2] == {"u_neardup.jpg", "u_free.jpg"}  # fold 2 validates on fold0a, trains on fold1a
    assert [fold_facts(frames, fold, 3)["unlabeled_excluded_leakage"] for fold in range(3)] == [3, 2, 2]


def test_drop_mode_leaves_repeats_out_and_off_mode_knows_videos_only():
    dropped = assign_pool_buckets(KEPT, CANDIDATES, ROOT, "drop").set_index("image_id")
    assert dropped.loc["u_neardup.jpg", "excluded"] == dropped.loc["u_span.jpg", "excluded"] == NEAR_DUPLICATE
    assert dropped.loc["u_video.jpg", "pool_bucket"] == unlabeled_bucket("fold0a")  # the video rule holds
    off = assign_pool_buckets(KEPT, CANDIDATES, None, "off").set_index("image_id")
    assert off.loc["u_video.jpg", "pool_bucket"] == unlabeled_bucket("fold0a")
    assert off.loc["u_neardup.jpg", "pool_bucket"] == UNLABELED


@pytest.mark.parametrize("folds", [1, 2, 5])
def test_a_pool_never_holds_a_held_out_bucket_or_its_unlabeled_twin(folds):
    for fold in range(folds):
        held_out = run_buckets(fold, folds)["val"] + run_buckets(fold, folds)["test"]
        pool = pool_buckets("unlabeled", fold, folds)
        assert pool[: len(pool_buckets("train", fold, folds))] == pool_buckets("train", fold, folds)
        assert not set(pool) & {*held_out, *(unlabeled_bucket(b) for b in held_out)}
        assert set(pool) <= set(buckets(folds)) | set(unlabeled_buckets(folds))
    with pytest.raises(UserError, match=r"^config key pretraining\.\*\.pool: 'both'"):
        pool_buckets("both", 0, folds)


def test_an_unknown_pool_is_a_one_line_error_naming_the_key():
    config = {"dataset": {}, "models": {"cnn": {"architecture": "custom_cnn"}}, "pretraining": {"s": {"pool": "all"}}}
    with pytest.raises(UserError, match=r"^config key pretraining\.s\.pool: 'all' is not one of") as err:
        validate_config(config)
    assert "\n" not in str(err.value)
    config["pretraining"]["s"]["pool"] = "unlabeled"
    assert validate_config(config)["pretraining"]["s"]["pool"] == "unlabeled"


def test_the_record_states_the_pool_and_its_unlabeled_counts(tmp_path):
    info = {"name": "s", "method": "simclr", "backbone": "resnet50", "pool": "unlabeled", "epochs_run": 1}
    info.update(pool_images=40, pool_buckets=["train", UNLABELED], weights_sha256="x")
    info.update(unlabeled_images=7, unlabeled_excluded_leakage=3)
    (tmp_path / "info.json").write_text(json.dumps(info))
    record = provenance(tmp_path / "info.json")
    assert (
        record["description"]
        == describe("s", info)
        == "pretrained:s (simclr resnet50, 1 epochs on 40 train+unlabeled images)"
    )
    assert record["pretraining"]["unlabeled_images"] == 7
    assert record["pretraining"]["unlabeled_excluded_leakage"] == 3
    del info["unlabeled_images"], info["unlabeled_excluded_leakage"]
    (tmp_path / "info.json").write_text(json.dumps(dict(info, pool="train")))
    assert "unlabeled_images" not in provenance(tmp_path / "info.json")["pretraining"]  # pool: train as before


# --- which frames lose only their label --------------------------------------------------------


def test_label_removed_frames_are_kept_apart_from_image_removed_ones(tmp_path):
    """No label, a class too small: unlabeled frames. A missing file or a small image: not frames.
    An image with one labelled row is in the filtered table, not here. The rows add up."""
    va, vb, vc, vd = (f"video{x * 6}" for x in "ABCD")  # Quilt video ids have 11 characters
    rows = [
        {"image_path": vid_name(va, 1)},  # kept
        {"image_path": vid_name(va, 2), "pathology": "[]"},  # no label, its video is kept
        {"image_path": vid_name(vb, 1), "pathology": "['Breast']"},  # a class too small
        {"image_path": vid_name(vc, 1), "pathology": "[]", "height": 10.0},  # too small an image
        {"image_path": vid_name(vd, 1), "pathology": "[]"},  # its file is missing
        {"image_path": vid_name(va, 3), "pathology": "[]"},  # a caption row without a label...
        {"image_path": vid_name(va, 3)},  # ... of an image that is kept
        {"image_path": vid_name(va, 4)},
    ]
    lookup = write_lookup(tmp_path / "lookup.csv", rows)
    touch(tmp_path / "img", *(r["image_path"] for r in rows if vd not in r["image_path"]))
    filters = FilterSettings.from_config({"min_per_class": 2, "min_image_side": 64, "near_duplicates": "off"})
    table, counts = label_removed_images("quilt", lookup, tmp_path / "img", filters, None)
    assert table["image_id"].tolist() == [vid_name(va, 2), vid_name(vb, 1)]
    assert table["video"].tolist() == [va, vb]
    assert table["removed_by"].tolist() == ["no_label", "class_too_small"]
    assert set(table["removed_by"]) <= set(LABEL_REASONS)
    assert counts == {"rows": 4, "rows_image_missing": 1, "rows_of_kept_images": 1, "rows_unlabeled": 2}
    train = pd.DataFrame({"image_id": [vid_name(va, i) for i in (1, 3, 4)], "video": [va] * 3})
    bucket_manifests, frames, report = split_unlabeled(table, counts, {"train": train}, filters, 1)
    assert report["buckets"] == {UNLABELED: 1, "unlabeled-train": 1, "unlabeled-val": 0, "unlabeled-test": 0}
    assert report["folds"]["0"] == {
        "pool_buckets": [UNLABELED, "unlabeled-train"],
        "unlabeled_images": 2,
        "unlabeled_excluded_leakage": 0,
    }
    assert bucket_manifests["unlabeled-train"]["image_id"].tolist() == [vid_name(va, 2)]
    assert (bucket_manifests[UNLABELED]["label_index"] == -1).all()


# --- end to end: 2 folds, SimCLR on train + unlabeled frames -----------------------------------

CONFIG = """
dataset:
  format: quilt
  metadata: data/lookup.csv
  image_root: data/images
splits:
  folds: 2
pretraining:
  simclr:
    pool: unlabeled
"""
CONFIGS = ("config/test.yaml", "config/pretrain_test.yaml", "config/unlabeled_test.yaml")


def _dataset(workdir: Path) -> None:
    """The demo, with the label taken from every row of one frame in three of each class's videos
    (so labelled videos have unlabeled frames) on top of its own label-less rows."""
    from quiltflow.data.demo import generate_demo

    lookup, images = workdir / "data/lookup.csv", workdir / "data/images"
    generate_demo(lookup, images, seed=0, images_per_class=16, tile_size=48, classes=["Breast", "Pulmonary", "Renal"])
    table = pd.read_csv(lookup)
    quilt = table[(table["subset"] == "quilt") & table["pathology"].astype(str).str.startswith("['")]
    video = quilt["image_path"].str.split("_image_").str[0]
    chosen = quilt.groupby(video)["image_path"].first().iloc[::2]
    table.loc[table["image_path"].isin(chosen), "pathology"] = "[]"
    table.to_csv(lookup, index=False)


@pytest.fixture(scope="module")
def unlabeled_run(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("unlabeled") / "run")
    _dataset(workdir)
    (workdir / "config/unlabeled_test.yaml").write_text(CONFIG)
    targets = [f"results/pretrained/simclr/fold{f}/pretrain_info.json" for f in (0, 1)]
    snakemake(workdir, *targets, configfiles=CONFIGS)
    return workdir


def _records(index: Path) -> list[dict]:
    index_json = load_index(index)
    out = []
    for shard in index_json["shards"]:
        with open(index.parent / shard["path"], "rb") as fh:
            out += [decode_example(r) for r in iter_records(fh)]
    return out


def _manifest(results: Path, bucket: str) -> pd.DataFrame:
    return pq.read_table(results / f"splits/{bucket}.parquet").to_pandas()


def test_pool_shards_hold_no_image_or_video_of_the_folds_held_out_buckets(unlabeled_run):
    results = unlabeled_run / "results"
    report = json.loads((results / "splits/unlabeled_report.json").read_text())
    for fold in (0, 1):
        held = pd.concat([_manifest(results, b) for k in ("val", "test") for b in run_buckets(fold, 2)[k]])
        videos = set(held["video"])
        info = json.loads((results / f"pretrained/simclr/fold{fold}/pretrain_info.json").read_text())
        assert info["pool"] == "unlabeled" and info["pool_buckets"] == pool_buckets("unlabeled", fold, 2)
        ids, groups, unlabeled = set(), set(), 0
        for bucket in info["pool_buckets"]:
            records = _records(results / f"tfrecords/{bucket}.index.json")
            ids |= {r["image/id"][0].decode() for r in records}
            groups |= {r["image/group"][0].decode() for r in records}
            unlabeled += sum(r["image/label"] == [-1] for r in records)
            frames_videos = set(_manifest(results, bucket)["video"])
            assert not frames_videos & videos, (fold, bucket)
        assert not ids & set(held["image_id"])
        assert not groups & set(held["group"])  # nor a unit (video, or videos joined) held out
        assert info["pool_images"] == len(ids)
        assert unlabeled == info["unlabeled_images"] == report["folds"][str(fold)]["unlabeled_images"] > 0
        assert info["unlabeled_excluded_leakage"] == report["folds"][str(fold)]["unlabeled_excluded_leakage"] > 0


def test_every_label_removed_row_is_accounted_for_once(unlabeled_run):
    results = unlabeled_run / "results"
    filtered = json.loads((results / "metadata/filter_report.json").read_text())
    report = json.loads((results / "splits/unlabeled_report.json").read_text())
    rows = report["label_removed_rows"]
    assert rows["rows"] == sum(filtered["dropped"].get(r, 0) for r in LABEL_REASONS)
    assert rows["rows"] == rows["rows_image_missing"] + rows["rows_of_kept_images"] + rows["rows_unlabeled"]
    frames = pq.read_table(results / "splits/unlabeled_frames.parquet").to_pandas()
    assert len(frames) == report["images"] == frames["image_id"].nunique()
    assert int(frames["n_captions"].sum()) == rows["rows_unlabeled"]
    assert sum(report["buckets"].values()) + sum(report["excluded"].values()) + report[SPANS_BUCKETS] == len(frames)
    assert not set(frames["image_id"]) & set(
        pq.read_table(results / "metadata/filtered.parquet")["image_id"].to_pylist()
    )


def test_without_pool_unlabeled_the_dag_is_unchanged(tmp_path):
    """A config without pool: unlabeled plans no new job; with it, rule split_unlabeled appears."""
    workdir = copy_workflow(tmp_path / "run")
    plain = planned_jobs(workdir, configfiles=("config/test.yaml", "config/pretrain_test.yaml"))
    assert "split_unlabeled" not in rules_of(plain)
    assert not any("unlabeled" in job for job in plain)
    (workdir / "config/unlabeled_test.yaml").write_text("pretraining:\n  simclr:\n    pool: unlabeled\n")
    configs = ("config/test.yaml", "config/pretrain_test.yaml", "config/unlabeled_test.yaml")
    with_pool = planned_jobs(workdir, configfiles=configs)
    assert rules_of(with_pool) - rules_of(plain) == {"split_unlabeled"}
