"""Metadata filtering: every drop reason, dedupe, path safety, adapters, stable output bytes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from quiltflow.core.errors import UserError
from quiltflow.core.settings import FilterSettings, section_schema
from quiltflow.data.lookup import parse_pathology
from quiltflow.data.metadata import DROP_REASONS, filter_metadata
from quiltflow.records.tables import FILTERED_SCHEMA, read_filtered, write_filtered
from support import COLUMNS, touch, vid_name, write_lookup

REPO = Path(__file__).resolve().parents[1]


def run_filter(fmt: str, metadata: Path | None, root: Path, filters: dict | None, columns: dict | None):
    """filter_metadata with the filters section as a config gives it (validated by the schema)."""
    return filter_metadata(fmt, metadata, root, FilterSettings.from_config(filters), columns)


def check(report: dict, table: pd.DataFrame) -> None:
    """The invariants every report must satisfy."""
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    assert set(report["dropped"]) <= set(DROP_REASONS)
    assert report["images_kept"] == table["image_id"].nunique()
    assert sum(report["class_counts"].values()) == len(table)
    assert list(table.columns) == FILTERED_SCHEMA.names
    assert table["image_id"].is_monotonic_increasing


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "images"
    r.mkdir()
    return r


def test_every_quilt_reason_counted_once(tmp_path: Path, root: Path) -> None:
    A, B, C, D, E = "AAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCCCCCC", "DDDDDDDDDDD", "EEEEEEEEEEE"
    rows = [
        # Class Renal: 4 images in video A (one with two caption rows).
        *({"image_path": vid_name(A, i)} for i in range(4)),
        {"image_path": vid_name(A, 0), "caption": "second caption"},  # duplicate_row
        {"image_path": vid_name(B, 0), "pathology": "['Bone', 'Renal']"},  # Bone: 2 images
        {"image_path": vid_name(B, 1), "pathology": "['Bone']"},
        # Pulmonary: 2 images, as many as Bone: the name decides the tie for the top 2.
        *({"image_path": vid_name(E, i), "pathology": "['Pulmonary']"} for i in range(2)),
        {"image_path": vid_name(C, 0), "pathology": "['Cardiac']"},  # class_too_small
        {"image_path": vid_name(D, 0), "pathology": "['Breast']"},  # class_excluded
        {"image_path": ""},  # empty_path
        {"image_path": "../escape.jpg"},  # unsafe_path
        {"image_path": "laion_1.jpg", "subset": "laion"},  # subset_excluded
        {"image_path": vid_name(A, 10), "not_histology": 1},  # not_histology
        {"image_path": vid_name(A, 11), "magnification": 0},  # magnification
        {"image_path": vid_name(A, 12), "height": 100.0, "width": 900.0},  # small_image
        {"image_path": vid_name(A, 13), "pathology": "['Renal'"},  # malformed_pathology
        {"image_path": vid_name(A, 14), "pathology": "[]"},  # no_label
        {"image_path": vid_name(A, 15)},  # image_missing
        {"image_path": vid_name(A, 16), "single_wsi": 0},  # single_wsi
        {"image_path": vid_name(A, 17), "pathology": "['Unknown', 'Renal']"},  # label_not_in_vocabulary
    ]
    touch(
        root,
        *(vid_name(A, i) for i in (0, 1, 2, 3, 10, 11, 12, 13, 14, 16, 17)),
        vid_name(B, 0),
        vid_name(B, 1),
        vid_name(E, 0),
        vid_name(E, 1),
        vid_name(C, 0),
        vid_name(D, 0),
        "laion_1.jpg",
    )
    (root.parent / "escape.jpg").write_bytes(b"x")  # exists, but outside the root
    lookup = write_lookup(tmp_path / "lookup.csv", rows)
    filters = {
        "subsets": ["quilt", "openpath", "pubmed"],
        "magnifications": [1, 2],
        "min_image_side": 224,
        "exclude_classes": ["Breast"],
        "min_per_class": 2,
        "top_k_classes": 2,
        "single_wsi": True,
    }
    table, report = run_filter("quilt", lookup, root, filters, None)
    check(report, table)
    # not_image_file is folder-only; near_duplicate needs decodable images (tests/test_neardup.py).
    expected = {r: 1 for r in DROP_REASONS if r not in ("not_image_file", "near_duplicate")}
    expected["class_not_top_k"] = 2  # Pulmonary's two images
    assert report["dropped"] == expected
    assert report["rows_in"] == len(rows)
    assert table["image_id"].tolist() == [vid_name(A, i) for i in range(4)] + [vid_name(B, i) for i in range(2)]
    assert report["class_counts"] == {"Renal": 4, "Bone": 2}
    assert table["group"].unique().tolist() == [A, B]
    assert report["raw_labels"] == {"Renal": 13, "Bone": 2, "Pulmonary": 2, "Cardiac": 1, "Breast": 1, "Unknown": 1}
    assert report["video_id_unmatched"] == 0


def test_vocabulary_drops_unknown_labels_and_reports_raw_values(tmp_path: Path, root: Path) -> None:
    labels = ["Renal", "Renal", "renal", "Unknown", "Kidney", "Pulmonary"]
    names = [vid_name("v" * 10 + str(i), i) for i in range(len(labels))]
    touch(root, *names)
    rows = [{"image_path": n, "pathology": repr([lab, "Bone"])} for n, lab in zip(names, labels)]
    lookup = write_lookup(tmp_path / "l.csv", rows)
    table, report = run_filter("quilt", lookup, root, {}, None)
    check(report, table)
    assert report["dropped"] == {"label_not_in_vocabulary": 3}
    assert report["raw_labels"] == {"Renal": 2, "renal": 1, "Unknown": 1, "Kidney": 1, "Pulmonary": 1}
    assert report["class_counts"] == {"Renal": 2, "Pulmonary": 1}
    table, report = run_filter("quilt", lookup, root, {"classes": None}, None)  # the old behaviour
    assert "label_not_in_vocabulary" not in report["dropped"] and len(table) == 6
    with pytest.raises(UserError, match=r"filters.classes \(1 names\) matched no label .*'Renal' 2"):
        run_filter("quilt", lookup, root, {"classes": ["Bone"]}, None)


def test_vocabulary_default_is_the_schema_and_covers_the_demo() -> None:
    from quiltflow.data.demo import DEFAULT_CLASSES, TAIL_CLASS
    from quiltflow.data.lookup import SUBSPECIALTIES

    vocabulary = section_schema("filters")["properties"]["classes"]["default"]
    assert list(SUBSPECIALTIES) == vocabulary and len(vocabulary) == 18
    assert set(DEFAULT_CLASSES) | {TAIL_CLASS} <= set(vocabulary)
    for config in ("config/test.yaml", "config/config.yaml"):
        demo = yaml.safe_load((REPO / config).read_text()).get("dataset", {}).get("demo", {})
        assert set(demo.get("classes") or DEFAULT_CLASSES) <= set(vocabulary), config


def test_quilt_names_without_video_id_are_counted(tmp_path: Path, root: Path) -> None:
    names = [vid_name("abcdefghijk", 1), "frame_without_id.jpg", "short_image_x.jpg", "op.jpg"]
    touch(root, *names)
    rows = [{"image_path": n, "subset": "openpath" if n == "op.jpg" else "quilt"} for n in names]
    table, report = run_filter("quilt", write_lookup(tmp_path / "l.csv", rows), root, {}, None)
    check(report, table)
    assert report["video_id_unmatched"] == 2  # openpath names never carry one: not counted
    assert dict(zip(table["image_id"], table["group"]))["frame_without_id.jpg"] == "frame_without_id"


@pytest.mark.parametrize(
    "single_wsi, kept", [(None, ["a.jpg", "b.jpg", "c.jpg"]), (True, ["a.jpg"]), (False, ["b.jpg", "c.jpg"])]
)
def test_single_wsi_filter(tmp_path: Path, root: Path, single_wsi: bool | None, kept: list[str]) -> None:
    touch(root, "a.jpg", "b.jpg", "c.jpg")
    rows = [{"image_path": "a.jpg", "single_wsi": 1}, {"image_path": "b.jpg", "single_wsi": 0}]
    rows.append({"image_path": "c.jpg", "single_wsi": ""})  # unknown
    table, report = run_filter("quilt", write_lookup(tmp_path / "l.csv", rows), root, {"single_wsi": single_wsi}, None)
    check(report, table)
    assert table["image_id"].tolist() == kept
    assert report["dropped"].get("single_wsi", 0) == 3 - len(kept)


def test_dedupe_keeps_first_row_label_and_counts_captions(tmp_path: Path, root: Path) -> None:
    name = vid_name("_x-y_z0123a", 1)
    rows = [
        {"image_path": name, "pathology": "['Renal', 'Bone']"},
        {"image_path": "other.jpg", "subset": "openpath", "pathology": "['Bone']"},
        {"image_path": name, "pathology": "['Bone']"},
        {"image_path": name, "pathology": "['Bone']"},
    ]
    touch(root, name, "other.jpg")
    lookup = write_lookup(tmp_path / "l.csv", rows)
    table, report = run_filter("quilt", lookup, root, {}, None)
    check(report, table)
    first = table.set_index("image_id").loc[name]
    assert first["label"] == "Renal" and first["n_captions"] == 3
    assert list(first["pathologies"]) == ["Renal", "Bone"]
    assert report["dropped"] == {"duplicate_row": 2}
    assert report["rows_kept"] == report["images_kept"] == 2
    assert report["distinct_images_in"] == 2

    table, report = run_filter("quilt", lookup, root, {"dedupe": False}, None)
    check(report, table)
    assert report["rows_kept"] == 4 and report["images_kept"] == 2 and report["dropped"] == {}
    assert table[table.image_id == name]["label"].tolist() == ["Renal", "Bone", "Bone"]


@pytest.mark.parametrize(
    "name, group",
    [
        (vid_name("_abcdefghij", 1), "_abcdefghij"),
        (vid_name("-abcdefghij", 1), "-abcdefghij"),
        (vid_name("ab_image_cd", 1), "ab_image_cd"),  # the id itself contains "_image_"
        (vid_name("a_b_c_d_e_f", 1), "a_b_c_d_e_f"),
        ("short_image_x.jpg", "short_image_x"),  # no 11-char id: file stem
    ],
)
def test_video_id_regex(tmp_path: Path, root: Path, name: str, group: str) -> None:
    touch(root, name)
    lookup = write_lookup(tmp_path / "l.csv", [{"image_path": name}])
    table, report = run_filter("quilt", lookup, root, {}, None)
    check(report, table)
    assert table["group"].tolist() == [group]


def test_group_is_stem_outside_quilt_subset(tmp_path: Path, root: Path) -> None:
    name = vid_name("abcdefghijk", 1)
    touch(root, name)
    lookup = write_lookup(tmp_path / "l.csv", [{"image_path": name, "subset": "pubmed", "magnification": ""}])
    table, _ = run_filter("quilt", lookup, root, {}, None)
    assert table["group"].tolist() == [Path(name).stem]
    assert table["magnification"].isna().all()


def test_unsafe_paths_dropped_and_inner_dotdot_normalised(tmp_path: Path, root: Path) -> None:
    touch(root, "ok.jpg", "sub/deep.jpg")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    rows = [
        {"image_path": p}
        for p in (
            "../outside.jpg",
            "sub/../../outside.jpg",
            str(tmp_path / "outside.jpg"),
            "/etc/passwd",
            "\\\\server\\share\\x.jpg",
            "C:\\x.jpg",
            "sub/../ok.jpg",
            "ok.jpg",
            "./sub/deep.jpg",
            "..",
        )
    ]
    lookup = write_lookup(tmp_path / "l.csv", rows)
    table, report = run_filter("quilt", lookup, root, {}, None)
    check(report, table)
    assert report["dropped"] == {"unsafe_path": 7, "duplicate_row": 1}
    assert table["image_id"].tolist() == ["ok.jpg", "sub/deep.jpg"]
    assert table.set_index("image_id").loc["ok.jpg", "n_captions"] == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("['Renal', 'Hematopathology', 'Pulmonary']", ["Renal", "Hematopathology", "Pulmonary"]),
        ("['Head and Neck']", ["Head and Neck"]),
        ("[]", []),
        ("", []),
        (None, []),
        ("nan", []),
        ("['Renal', 'Bone'", None),
        ("Renal; Bone", None),
        ("[Renal]", None),
        ("['Bone', 3]", None),
        ("{'a': 1}", None),
        ("__import__('os')", None),
        ("[" * 500, None),
        ("'Renal'", None),
    ],
)
def test_parse_pathology(text: str | None, expected: list[str] | None) -> None:
    assert parse_pathology(text) == expected


def test_malformed_pathology_counted_not_crashing(tmp_path: Path, root: Path) -> None:
    bad = ["['Renal', 'Bone'", "Renal; Bone", "[Renal]", "['Bone', 3]", "[[[", "x" * 10000]
    rows = [{"image_path": f"{i}.jpg", "pathology": p} for i, p in enumerate(bad)]
    rows.append({"image_path": "good.jpg"})
    touch(root, "good.jpg", *(f"{i}.jpg" for i in range(len(bad))))
    table, report = run_filter("quilt", write_lookup(tmp_path / "l.csv", rows), root, {}, None)
    check(report, table)
    assert report["dropped"] == {"malformed_pathology": len(bad)}
    assert table["image_id"].tolist() == ["good.jpg"]


def test_older_lookup_without_flag_columns(tmp_path: Path, root: Path) -> None:
    """A 13-column public copy: a filter at its neutral value runs, any other stops with one line."""
    touch(root, "a.jpg")
    cols = [c for c in COLUMNS if c not in ("not_histology", "single_wsi")]
    lookup = write_lookup(tmp_path / "l.csv", [{"image_path": "a.jpg"}], columns=cols)
    neutral = {"drop_not_histology": False, "single_wsi": None, "magnifications": None, "min_image_side": 0}
    table, report = run_filter("quilt", lookup, root, neutral, None)
    check(report, table)
    assert len(table) == 1
    for key, value, column, fix in [
        ("drop_not_histology", True, "not_histology", "false"),
        ("single_wsi", True, "single_wsi", "null"),
    ]:
        with pytest.raises(UserError) as err:
            run_filter("quilt", lookup, root, {**neutral, key: value}, None)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"config key filters.{key}: true, but the lookup ")
        assert f"has no column {column} (13-column copy?); set it to {fix}" in message, message


def test_filters_on_absent_size_and_magnification_columns_stop(tmp_path: Path, root: Path) -> None:
    touch(root, "a.jpg")
    cols = [c for c in COLUMNS if c not in ("magnification", "height")]
    lookup = write_lookup(tmp_path / "l.csv", [{"image_path": "a.jpg"}], columns=cols)
    table, _ = run_filter("quilt", lookup, root, {}, None)  # defaults need neither column
    assert len(table) == 1
    with pytest.raises(
        UserError, match=r"^config key filters.magnifications: \[2\], .* no column magnification .*null"
    ):
        run_filter("quilt", lookup, root, {"magnifications": [2]}, None)
    with pytest.raises(UserError, match=r"^config key filters.min_image_side: 224, .* no column height .*set it to 0$"):
        run_filter("quilt", lookup, root, {"min_image_side": 224}, None)


def test_quilt_parquet_input(tmp_path: Path, root: Path) -> None:
    touch(root, "a.jpg")
    lookup = write_lookup(tmp_path / "l.csv", [{"image_path": "a.jpg"}, {"image_path": "b.jpg"}])
    pq_path = tmp_path / "l.parquet"
    pd.read_csv(lookup).to_parquet(pq_path)
    table, report = run_filter("quilt", pq_path, root, {}, None)
    check(report, table)
    assert report["dropped"] == {"image_missing": 1}


def test_a_folder_named_like_an_image_is_missing_not_kept(tmp_path: Path, root: Path) -> None:
    touch(root, "a.jpg")
    (root / "b.jpg").mkdir()  # at the root (one listing) and below it (per-folder listing)
    (root / "x").mkdir()
    (root / "x" / "c.jpg").mkdir()
    rows = [{"image_path": p} for p in ("a.jpg", "b.jpg", "x/c.jpg")]
    table, report = run_filter("quilt", write_lookup(tmp_path / "l.csv", rows), root, {}, None)
    check(report, table)
    assert table["image_id"].tolist() == ["a.jpg"]
    assert report["dropped"] == {"image_missing": 2}


def test_empty_results_name_the_filter(tmp_path: Path, root: Path) -> None:
    touch(root, "a.jpg", "b.jpg")
    lookup = write_lookup(tmp_path / "l.csv", [{"image_path": "a.jpg"}, {"image_path": "b.jpg"}])
    with pytest.raises(UserError, match=r"filters.min_per_class=50 .*largest class has 2"):
        run_filter("quilt", lookup, root, {"min_per_class": 50}, None)
    with pytest.raises(UserError, match=r"filters.subsets=\['laion'\]"):
        run_filter("quilt", lookup, root, {"subsets": ["laion"]}, None)
    with pytest.raises(UserError, match=r"filters.exclude_classes"):
        run_filter("quilt", lookup, root, {"exclude_classes": ["Renal"]}, None)
    with pytest.raises(UserError, match=r"image_root .* is not a directory"):
        run_filter("quilt", lookup, tmp_path / "l.csv", {}, None)
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    with pytest.raises(UserError, match=r"no usable row points to an existing file .*'a.jpg'"):
        run_filter("quilt", lookup, empty_root, {}, None)


@pytest.mark.parametrize(
    "filters, key",
    [
        ({"bogus": 1}, "filters: Additional properties are not allowed ('bogus'"),
        ({"min_per_class": 0}, "filters.min_per_class: 0 is less than the minimum of 1"),
        ({"magnifications": [3]}, "filters.magnifications.0"),
        ({"magnifications": [None, "2"]}, "filters.magnifications.1"),
        ({"top_k_classes": 1}, "filters.top_k_classes: 1 is less than the minimum of 2"),
        ({"label_policy": "all"}, "filters.label_policy"),
        ({"subsets": "quilt"}, "filters.subsets"),
        ({"subsets": None}, "filters.subsets"),
        ({"dedupe": "yes"}, "filters.dedupe"),
        ({"near_duplicates": "maybe"}, "filters.near_duplicates"),
        ({"near_duplicate_distance": 12}, "filters.near_duplicate_distance: 12 is greater than the maximum of 11"),
        ({"classes": "Renal"}, "filters.classes"),
        ({"single_wsi": 1}, "filters.single_wsi"),
    ],
)
def test_bad_filters_are_one_line_from_the_schema(filters: dict, key: str) -> None:
    with pytest.raises(UserError) as err:
        FilterSettings.from_config(filters)
    message = str(err.value)
    assert message.startswith(f"config key {key}") and "\n" not in message, message


def test_filter_settings_defaults_come_from_the_schema() -> None:
    schema = section_schema("filters")["properties"]
    settings = FilterSettings.from_config(None)
    assert settings.as_dict() == {key: prop["default"] for key, prop in schema.items()}
    assert FilterSettings.from_config({"magnifications": [2, None]}).magnifications == (2, None)
    assert FilterSettings.from_config({"near_duplicates": False}).near_duplicates == "off"  # YAML's bare off


def test_missing_column_and_format_errors(tmp_path: Path, root: Path) -> None:
    lookup = write_lookup(
        tmp_path / "l.csv",
        [{"image_path": "a.jpg"}],
        columns=[c for c in COLUMNS if c != "pathology"],
    )
    with pytest.raises(UserError, match="'pathology' not found"):
        run_filter("quilt", lookup, root, {}, None)
    with pytest.raises(UserError, match="dataset.format"):
        run_filter("tsv", lookup, root, {}, None)
    with pytest.raises(UserError, match="does not exist"):
        run_filter("quilt", tmp_path / "nope.csv", root, {}, None)


def test_magnification_list_may_keep_unknown(tmp_path: Path, root: Path) -> None:
    touch(root, "a.jpg", "b.jpg", "c.jpg")
    lookup = write_lookup(
        tmp_path / "l.csv",
        [
            {"image_path": "a.jpg", "magnification": 2},
            {"image_path": "b.jpg", "magnification": ""},
            {"image_path": "c.jpg", "magnification": 0},
        ],
    )
    table, report = run_filter("quilt", lookup, root, {"magnifications": [2, None]}, None)
    check(report, table)
    assert table["image_id"].tolist() == ["a.jpg", "b.jpg"]
    assert report["dropped"] == {"magnification": 1}


def test_csv_adapter(tmp_path: Path, root: Path) -> None:
    touch(root, "x/a.png", "x/b.png", "c.png", "d.png")
    df = pd.DataFrame(
        {
            "file": ["x/a.png", "x/b.png", "c.png", "d.png", "gone.png", "/abs.png"],
            "dx": ["tumor", "normal", "tumor", "", "normal", "tumor"],
            "patient": ["p1", "p1", None, "p2", "p3", "p4"],
        }
    )
    df.to_csv(tmp_path / "meta.csv", index=False)
    cols = {"path": "file", "label": "dx", "group": "patient"}
    table, report = run_filter("csv", tmp_path / "meta.csv", root, {}, cols)
    check(report, table)
    assert table["image_id"].tolist() == ["c.png", "x/a.png", "x/b.png"]
    assert table["group"].tolist() == ["c", "p1", "p1"]  # missing group -> file stem
    assert set(table["subset"]) == {"csv"} and table["source_split"].isna().all()
    assert report["dropped"] == {"no_label": 1, "image_missing": 1, "unsafe_path": 1}
    # Parquet input and no group column give the same images, grouped by stem.
    df.to_parquet(tmp_path / "meta.parquet")
    t2, r2 = run_filter("csv", tmp_path / "meta.parquet", root, {}, {"path": "file", "label": "dx", "group": None})
    check(r2, t2)
    assert t2["group"].tolist() == ["c", "a", "b"]
    with pytest.raises(UserError, match="columns.label"):
        run_filter("csv", tmp_path / "meta.csv", root, {}, {"path": "file"})
    with pytest.raises(UserError, match="'label_col' not found"):
        run_filter("csv", tmp_path / "meta.csv", root, {}, {"path": "file", "label": "label_col"})


def test_folder_adapter(tmp_path: Path, root: Path) -> None:
    touch(
        root,
        "tumor/t1.jpg",
        "tumor/t2.JPEG",
        "tumor/deep/t3.png",
        "normal/n1.jpg",
        "normal/notes.txt",
        "normal/.hidden.jpg",
        "stray.jpg",
    )
    table, report = run_filter("folder", None, root, {"min_per_class": 1}, None)
    check(report, table)
    assert table["image_id"].tolist() == [
        "normal/n1.jpg",
        "tumor/deep/t3.png",
        "tumor/t1.jpg",
        "tumor/t2.JPEG",
    ]
    assert table["label"].tolist() == ["normal", "tumor", "tumor", "tumor"]
    assert table["group"].tolist() == ["n1", "t3", "t1", "t2"]
    assert report["dropped"] == {"not_image_file": 2}
    assert report["rows_in"] == 6  # stray.jpg at the top level belongs to no class


def test_folder_adapter_on_real_tiles(lc25000: Path) -> None:
    table, report = run_filter("folder", None, lc25000, {}, None)
    check(report, table)
    assert len(report["class_counts"]) == 3
    assert min(report["class_counts"].values()) >= 100


def test_write_filtered_is_byte_identical(tmp_path: Path, root: Path) -> None:
    names = [vid_name(v, i) for v in ("_aaaaaaaaaa", "-bbbbbbbbbb") for i in range(5)]
    touch(root, *names)
    rows = [{"image_path": n, "pathology": "['Renal', 'Bone']" if i % 2 else "['Bone']"} for i, n in enumerate(names)]
    lookup = write_lookup(tmp_path / "l.csv", rows + rows[::-1])
    outs = []
    for k in range(2):
        table, report = run_filter("quilt", lookup, root, {}, None)
        write_filtered(table, report, tmp_path / f"t{k}.parquet", tmp_path / f"r{k}.json")
        outs.append(((tmp_path / f"t{k}.parquet").read_bytes(), (tmp_path / f"r{k}.json").read_bytes()))
    assert outs[0] == outs[1]
    schema = pq.read_schema(tmp_path / "t0.parquet")
    assert schema.metadata is None or b"pandas" not in schema.metadata
    back = read_filtered(tmp_path / "t0.parquet")
    assert back["image_id"].tolist() == sorted(names)
    assert back["n_captions"].dtype == "int32" and set(back["n_captions"]) == {2}
    got = dict(zip(back["image_id"], (list(p) for p in back["pathologies"])))
    assert got == {n: (["Renal", "Bone"] if i % 2 else ["Bone"]) for i, n in enumerate(names)}
    assert set(back["group"]) == {"_aaaaaaaaaa", "-bbbbbbbbbb"}
