"""Video-grouped, label-stratified splits: no leakage, stable bytes, sensible small classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from quiltflow.core.errors import UserError
from quiltflow.core.settings import SplitSettings
from quiltflow.data.splits import SPLITS, make_splits, write_splits
from quiltflow.records.tables import FILTERED_SCHEMA, arrow_to_pandas, read_filtered

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def settings(seed: int, fractions: dict = FRACTIONS, use_source_val: bool = False) -> SplitSettings:
    return SplitSettings.from_config({"fractions": fractions, "use_source_val": use_source_val}, seed=seed)


def make_table(n_groups: int = 200, seed: int = 0, singles: int = 300) -> pd.DataFrame:
    """A filtered-like table: videos of 1-40 images (one label each, some mixed) plus singletons."""
    rng = np.random.default_rng(seed)
    labels = ["Bone", "Breast", "Renal", "Pulmonary"]
    rows = []
    for g in range(n_groups):
        vid = f"{'_-'[g % 2]}{g:010d}"
        label = labels[int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))]
        for i in range(int(rng.integers(1, 40))):
            mixed = labels[0] if i == 3 and g % 7 == 0 else label  # a few videos hold two labels
            split = "val" if g % 10 == 0 else "train"
            rows.append((f"{vid}_image_{i:04d}.jpg", mixed, vid, split))
    for i in range(singles):
        rows.append((f"pubmed_{i:05d}.jpg", labels[i % 4], f"pubmed_{i:05d}", "train"))
    df = pd.DataFrame(rows, columns=["image_id", "label", "group", "source_split"])
    df["pathologies"] = [[lab] for lab in df["label"]]
    df["labels"] = df["pathologies"]
    df["subset"] = np.where(df["group"].str.startswith("pubmed"), "pubmed", "quilt")
    df["magnification"] = 1.0
    df["n_captions"] = 1
    df["video"] = df["group"]
    table = pa.Table.from_pandas(
        df[FILTERED_SCHEMA.names].sort_values("image_id"),
        schema=FILTERED_SCHEMA,
        preserve_index=False,
    )
    return arrow_to_pandas(table)


def assert_no_leak(manifests: dict[str, pd.DataFrame], table: pd.DataFrame) -> None:
    seen: dict[str, str] = {}
    for split, m in manifests.items():
        for g in m["group"].unique():
            assert seen.setdefault(g, split) == split, f"group {g} in {seen[g]} and {split}"
    all_ids = pd.concat([m["image_id"] for m in manifests.values()])
    assert sorted(all_ids) == sorted(table["image_id"])  # every row exactly once


def test_no_group_crosses_splits_and_fractions_hold() -> None:
    table = make_table()
    manifests, label_map, report = make_splits(table, settings(3))
    assert_no_leak(manifests, table)
    n = len(table)
    for s in SPLITS:
        assert abs(report["counts"][s] / n - FRACTIONS[s]) < 0.04, report["counts"]
        for cls in label_map["classes"]:  # stratified: every class near its share in every split
            share = (manifests[s]["label"] == cls).sum() / (table["label"] == cls).sum()
            assert abs(share - FRACTIONS[s]) < 0.1, (s, cls, share)
    assert report["groups"] == {s: manifests[s]["group"].nunique() for s in SPLITS}
    assert report["warnings"] == []
    assert label_map["classes"] == sorted(label_map["classes"])
    for m in manifests.values():
        assert m["label_index"].dtype == np.int32
        assert (m["label"].map(label_map["class_to_index"]) == m["label_index"]).all()
    # Seeded permutation: not in image_id (so not in video / class) order.
    assert not manifests["train"]["image_id"].is_monotonic_increasing


def test_same_seed_and_input_give_identical_bytes(tmp_path: Path) -> None:
    table = make_table(n_groups=60, singles=50)
    outputs = []
    for k, t in enumerate([table, table.sample(frac=1.0, random_state=1)]):  # row order must not matter
        manifests, label_map, report = make_splits(t, settings(7))
        paths = {s: tmp_path / f"{k}" / f"{s}.parquet" for s in SPLITS}
        write_splits(
            manifests,
            label_map,
            report,
            paths,
            tmp_path / f"{k}/label_map.json",
            tmp_path / f"{k}/split_report.json",
        )
        outputs.append([p.read_bytes() for p in sorted((tmp_path / f"{k}").iterdir())])
    assert outputs[0] == outputs[1]
    other, _, _ = make_splits(table, settings(8))
    first = read_filtered(tmp_path / "0" / "test.parquet")
    assert sorted(other["test"]["image_id"]) != sorted(first["image_id"])  # the seed matters
    report = json.loads((tmp_path / "0" / "split_report.json").read_text())
    assert {"seed", "fractions", "counts", "class_counts", "groups"} <= set(report)
    assert list(first.columns) == [*FILTERED_SCHEMA.names, "label_index", "label_indices"]


def test_use_source_val_puts_whole_groups_in_val() -> None:
    table = make_table(n_groups=80, singles=40)
    manifests, _, report = make_splits(table, settings(1, use_source_val=True))
    assert_no_leak(manifests, table)
    val_groups = set(table.loc[table["source_split"] == "val", "group"])
    assert set(manifests["val"]["group"]) == val_groups
    assert (manifests["train"]["source_split"] == "train").all()
    assert report["counts"]["test"] > 0 and report["use_source_val"] is True
    # A group with one source-val row goes to val entirely.
    mixed = table.copy()
    g = mixed["group"].iloc[0]
    idx = mixed.index[mixed["group"] == g]
    mixed.loc[idx[:1], "source_split"] = "val"
    m2, _, _ = make_splits(mixed, settings(1, use_source_val=True))
    assert g in set(m2["val"]["group"]) and g not in set(m2["train"]["group"])


def test_small_classes_kept_with_warning() -> None:
    table = make_table(n_groups=40, singles=0)
    extra = table.iloc[:2].copy()
    extra["image_id"] = ["zz_rare_1.jpg", "zz_rare_2.jpg"]
    extra["group"] = "rareVideo01"
    extra["label"] = "Ophthalmic"
    manifests, label_map, report = make_splits(pd.concat([table, extra]), settings(0))
    assert "Ophthalmic" in label_map["classes"]
    assert sum(int((m["label"] == "Ophthalmic").sum()) for m in manifests.values()) == 2
    assert any("Ophthalmic" in w for w in report["warnings"])


def test_tiny_classes_reach_every_split_when_they_can() -> None:
    """Four videos of one class: one each to val and test, the rest to train."""
    rows = [(f"v{g}xxxxxxxxx_image_{i}.jpg", "Renal", f"v{g}xxxxxxxxx") for g in range(4) for i in range(4)]
    rows += [(f"w{g}xxxxxxxxx_image_{i}.jpg", "Bone", f"w{g}xxxxxxxxx") for g in range(4) for i in range(4)]
    df = pd.DataFrame(rows, columns=["image_id", "label", "group"]).assign(
        pathologies=[[] for _ in rows],
        labels=[[r[1]] for r in rows],
        subset="quilt",
        source_split=None,
        magnification=np.nan,
        n_captions=1,
    )
    manifests, _, report = make_splits(df, settings(5))
    assert report["warnings"] == []
    for s in SPLITS:
        assert set(manifests[s]["label"]) == {"Renal", "Bone"}
    assert report["counts"]["train"] == 16


def test_use_source_val_gives_val_only_the_source_val_groups() -> None:
    """val's weight is 0 for the groups left to place: nothing but source val goes to val."""
    table = make_table(n_groups=30, singles=20)
    table["source_split"] = "train"
    manifests, _, report = make_splits(table, settings(0, use_source_val=True))
    assert report["counts"]["val"] == 0 and len(manifests["val"]) == 0
    assert list(manifests["val"].columns) == [*FILTERED_SCHEMA.names, "label_index", "label_indices"]


@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"train": 0.5, "val": 0.2, "test": 0.2}, "splits.fractions: train+val+test must sum to 1"),
        ({"train": 0.7, "val": 0.3, "holdout": 0.0}, "splits.fractions: Additional properties"),
        ({"train": 1.2, "val": -0.2, "test": 0.0}, "splits.fractions.test: 0.0 is less than"),
        ({"train": 0.0, "val": 0.5, "test": 0.5}, "splits.fractions.train: 0.0 is less than"),
        ({"train": 0.8, "val": 0, "test": 0.2}, "splits.fractions.val: 0 is less than"),
        ({"train": 0.7, "val": 0.3}, "splits.fractions: train+val+test must sum to 1, got 1.15"),
    ],
)
def test_bad_fractions_are_one_line_from_the_schema(fractions: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        settings(0, fractions)
    assert str(err.value).startswith(f"config key {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_seed_names_the_key() -> None:
    with pytest.raises(UserError, match=r"^config key seed: 'x' is not of type 'integer'"):
        settings("x")


def test_empty_table_is_user_error() -> None:
    with pytest.raises(UserError, match="no rows"):
        make_splits(make_table(n_groups=3, singles=0).iloc[:0], settings(0))
