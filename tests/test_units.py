"""The video is the unit: near-duplicates join whole videos, each video lies in one group and one
bucket (checked on every run), and image hashes are computed once per dataset (rule hash_images)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from quiltflow.core.errors import UserError
from quiltflow.core.settings import FilterSettings, SplitSettings
from quiltflow.data.demo import generate_demo
from quiltflow.data.image_hashes import existing_images, hash_images, read_image_hashes, write_image_hashes
from quiltflow.data.metadata import filter_metadata
from quiltflow.data.neardup import HASH_OK, HASH_UNREADABLE, HASH_VERSION, HASHES_PER_IMAGE
from quiltflow.data.splits import make_splits
from quiltflow.data.units import check_one_bucket_per_video, check_one_group_per_video, join_videos
from workflow_runner import copy_workflow, planned_jobs, rules_of, snakemake

# --- joining videos ----------------------------------------------------------------------------


def test_a_reused_frame_joins_both_whole_videos() -> None:
    """The case issue 23 found: one frame of video B is a copy of a frame of video A. Moving only
    that frame into A's group left B's other frames behind, in another split."""
    video = pd.Series(["A", "A", "A", "B", "B", "B", "C", "C"])
    cluster = np.array([0, 1, 2, 0, 4, 5, 6, 7])  # frame 3 (of B) clusters with frame 0 (of A)
    group, merge = join_videos(video, cluster)
    assert group.tolist() == ["A"] * 6 + ["C", "C"]
    assert (merge.videos, merge.units, merge.groups_merged) == (3, 2, 2)
    assert (merge.largest_unit_videos, merge.largest_unit_images) == (2, 6)


def test_chains_of_links_join_transitively() -> None:
    video = pd.Series(["v3", "v1", "v2", "v2", "v4"])
    cluster = np.array([10, 10, 11, 11, 12])  # v3~v1 (frames 0, 1), v2's two frames alone together
    group, _ = join_videos(video, cluster)
    assert group.tolist() == ["v1", "v1", "v2", "v2", "v4"]
    video = pd.Series(["a", "b", "b", "c", "c", "d"])
    cluster = np.array([0, 0, 2, 2, 4, 5])  # a~b (frames 0, 1), b~c (frames 2, 3): a, b, c one unit
    group, merge = join_videos(video, cluster)
    assert group.tolist() == ["a"] * 5 + ["d"] and merge.largest_unit_videos == 3


def random_frames(rng: np.random.Generator) -> pd.DataFrame:
    """Random videos of random sizes (1-12 frames), random labels, random links between frames."""
    n_videos = int(rng.integers(5, 60))
    sizes = rng.integers(1, 13, n_videos)
    video = np.repeat([f"vid{v:03d}" for v in range(n_videos)], sizes)
    n = len(video)
    cluster = np.arange(n)
    for _ in range(int(rng.integers(0, n // 3 + 1))):  # a frame reused as another random frame
        a, b = rng.integers(0, n, 2)
        cluster[cluster == cluster[b]] = cluster[a]
    labels = np.array(["Breast", "Renal", "Pulmonary"])[rng.integers(0, 3, n_videos)]
    table = pd.DataFrame(
        {
            "image_id": [f"{v}_image_{i:04d}.jpg" for i, v in enumerate(video)],
            "label": np.repeat(labels, sizes),
            "video": video,
            "subset": "quilt",
            "source_split": "train",
            "magnification": 1.0,
            "n_captions": 1,
        }
    )
    table["pathologies"] = table["labels"] = [[label] for label in table["label"]]
    table["group"], _ = join_videos(table["video"], cluster)
    return table.sort_values("image_id", ignore_index=True)


@pytest.mark.parametrize("folds", [1, 3])
def test_property_no_video_in_two_groups_no_group_in_two_buckets(folds: int) -> None:
    for case in range(40):
        table = random_frames(np.random.default_rng([case, folds]))
        check_one_group_per_video(table)
        assert (table.groupby("video")["group"].nunique() == 1).all()
        settings = SplitSettings.from_config({"folds": folds}, seed=case)
        manifests, _, _ = make_splits(table, settings)
        bucket_of = pd.concat(m[["video", "group"]].assign(bucket=name) for name, m in manifests.items())
        assert (bucket_of.groupby("group")["bucket"].nunique() == 1).all(), case
        assert (bucket_of.groupby("video")["bucket"].nunique() == 1).all(), case
        assert sum(len(m) for m in manifests.values()) == len(table)


def test_run_time_checks_name_the_video() -> None:
    table = pd.DataFrame({"video": ["vidA", "vidA", "vidB"], "group": ["vidA", "vidX", "vidB"]})
    with pytest.raises(UserError, match=r"^video 'vidA' has frames in 2 groups \['vidA', 'vidX'\]"):
        check_one_group_per_video(table)
    manifests = {
        "train": pd.DataFrame({"video": ["vidA", "vidB"], "group": ["u1", "u2"]}),
        "test": pd.DataFrame({"video": ["vidA"], "group": ["u3"]}),
    }
    with pytest.raises(UserError, match=r"^video 'vidA' has images in buckets \['test', 'train'\]"):
        check_one_bucket_per_video(manifests)
    manifests["test"] = pd.DataFrame({"video": ["vidC"], "group": ["u1"]})
    with pytest.raises(UserError, match=r"^group 'u1' has images in buckets"):
        check_one_bucket_per_video(manifests)


# --- the hash table ------------------------------------------------------------------------------


def write_jpeg(path: Path, seed: int, size: int = 64) -> None:
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
    low.resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)


def test_hash_table_round_trip_version_and_missing_images(tmp_path: Path) -> None:
    names = [f"img{i}.jpg" for i in range(5)]
    for i, name in enumerate(names):
        write_jpeg(tmp_path / name, i)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    hashes, table = hash_images([*reversed(names), "broken.jpg"], tmp_path, threads=2)
    assert table.column("image_id").to_pylist() == sorted([*names, "broken.jpg"])
    assert table.column("size").to_pylist()[1] == (tmp_path / "img0.jpg").stat().st_size
    write_image_hashes(table, tmp_path / "hashes.parquet")
    back = read_image_hashes(tmp_path / "hashes.parquet")
    assert back.hashes.shape == (6, HASHES_PER_IMAGE) and back.version == HASH_VERSION
    got, status = back.of(["img3.jpg", "broken.jpg"])
    assert status.tolist() == [HASH_OK, HASH_UNREADABLE] and (got[0] == hashes.hashes[4]).all()
    with pytest.raises(UserError, match=r"has no hash of 'new\.jpg' \(1 kept image\(s\) missing\)"):
        back.of(["img0.jpg", "new.jpg"])
    stale = table.replace_schema_metadata({b"hash_version": b"dhash-old"})
    pq.write_table(stale, tmp_path / "stale.parquet")
    with pytest.raises(UserError, match=r"stale\.parquet: hashes of descriptor 'dhash-old'"):
        read_image_hashes(tmp_path / "stale.parquet")


def test_existing_images_are_every_named_file_before_filters(tmp_path: Path) -> None:
    lookup, images = tmp_path / "lookup.csv", tmp_path / "images"
    generate_demo(lookup, images, seed=3, images_per_class=8, tile_size=32, classes=["Breast", "Renal"])
    rows = pd.read_csv(lookup)
    on_disk = {p.name for p in images.iterdir()}
    named = existing_images("quilt", lookup, images, None)
    assert set(named) == on_disk & set(rows["image_path"]) and named == sorted(named)
    assert len(named) < rows["image_path"].nunique()  # the demo names missing files too


# --- end to end: a reused frame across two multi-frame videos -------------------------------------


def reuse_frame(lookup: Path, images: Path) -> tuple[str, str]:
    """Copy one frame of a multi-frame video into another multi-frame video (re-encoded)."""
    rows = pd.read_csv(lookup)
    exists = rows["image_path"].map(lambda p: isinstance(p, str) and (images / p).is_file())
    rows = rows[exists & (rows["subset"] == "quilt")]
    video = rows["image_path"].str.slice(0, 11)
    sizes = video.value_counts()
    big = [v for v in sizes.index if sizes[v] >= 3]
    source, target = big[0], big[-1]
    frame = rows[video == source].iloc[0]
    copy_row = rows[video == target].iloc[0].copy()
    copy_row["image_path"] = f"{target}_image_reused.jpg"
    out = io.BytesIO()
    Image.open(images / frame["image_path"]).convert("RGB").save(out, "JPEG", quality=85)
    (images / copy_row["image_path"]).write_bytes(out.getvalue())
    full = pd.concat([pd.read_csv(lookup), copy_row.to_frame().T], ignore_index=True)
    full.to_csv(lookup, index=False)
    return source, target


@pytest.mark.slow
@pytest.mark.e2e
def test_workflow_joins_videos_and_hashes_once(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    data = tmp_path / "data"
    generate_demo(data / "lookup.csv", data / "images", seed=5, images_per_class=24, tile_size=48)
    source, target = reuse_frame(data / "lookup.csv", data / "images")
    overlay = {"dataset": {"format": "quilt", "metadata": str(data / "lookup.csv"), "image_root": str(data / "images")}}
    (workdir / "data.yaml").write_text(yaml.safe_dump(overlay))
    configs = ("config/test.yaml", "data.yaml")
    snakemake(workdir, "results/splits/split_report.json", configfiles=configs)
    table = pd.read_parquet(workdir / "results/metadata/filtered.parquet")
    of_video = table.groupby("video")["group"].agg(set)
    assert of_video[source] == of_video[target] == {min(source, target)}  # every frame of both
    manifests = {
        p.stem: pd.read_parquet(p) for p in (workdir / "results/splits").glob("*.parquet") if p.stem != "folds"
    }
    bucket = pd.concat(m[["video"]].assign(bucket=name) for name, m in manifests.items())
    assert (bucket.groupby("video")["bucket"].nunique() == 1).all()
    assert len(bucket[bucket["video"].isin([source, target])]["bucket"].unique()) == 1
    report = pd.read_json(workdir / "results/metadata/filter_report.json", typ="series")
    assert report["near_duplicates"]["groups_merged"] >= 2
    # A filter change reruns the filter, not the hashing.
    (workdir / "fewer.yaml").write_text(yaml.safe_dump({"filters": {"min_per_class": 5}}))
    jobs = rules_of(planned_jobs(workdir, "results/splits/split_report.json", configfiles=(*configs, "fewer.yaml")))
    assert "filter_metadata" in jobs and "hash_images" not in jobs


def test_filter_from_the_hash_table_equals_hashing_inline(tmp_path: Path) -> None:
    lookup, images = tmp_path / "lookup.csv", tmp_path / "images"
    generate_demo(lookup, images, seed=4, images_per_class=16, tile_size=32, classes=["Breast", "Renal"])
    reuse_frame(lookup, images)
    filters = FilterSettings.from_config({"min_per_class": 2})
    table = hash_images(existing_images("quilt", lookup, images, None), images, threads=2)[1]
    write_image_hashes(table, tmp_path / "hashes.parquet")
    hashes = read_image_hashes(tmp_path / "hashes.parquet")
    from_table = filter_metadata("quilt", lookup, images, filters, None, image_hashes=hashes)
    inline = filter_metadata("quilt", lookup, images, filters, None, threads=2)
    pd.testing.assert_frame_equal(from_table[0], inline[0])
    assert from_table[1] == inline[1] and from_table[1]["near_duplicates"]["groups_merged"] >= 2
