"""Multi-label targets (filters.label_policy: multilabel): filtering, splits, shards, the reader,
the loss, thresholds chosen on validation only, and one end-to-end cross-validated run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from quiltflow.core.errors import UserError
from quiltflow.core.settings import FilterSettings, SplitSettings
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, head_activation, read_task, task_of_policy
from quiltflow.data.metadata import DROP_REASONS, filter_metadata
from quiltflow.data.splits import make_splits
from support import MULTILABEL_CONFIGS, touch, vid_name, write_lookup
from workflow_runner import clone_run, snakemake

# Four videos; the lists are ordered (first = primary) and repeat a label on purpose.
LISTS = {
    "aaaaaaaaaa1": ["Renal", "Breast", "Renal"],
    "aaaaaaaaaa2": ["Breast", "Bone"],
    "aaaaaaaaaa3": ["Bone"],
    "aaaaaaaaaa4": ["Kidney", "Pulmonary"],  # Kidney is outside the vocabulary
}


def lookup(tmp_path: Path, images_per_video: int = 2) -> tuple[Path, Path]:
    root = tmp_path / "images"
    rows = []
    for vid, labels in LISTS.items():
        for i in range(images_per_video):
            touch(root, vid_name(vid, i))
            rows.append({"image_path": vid_name(vid, i), "pathology": repr(labels)})
    return write_lookup(tmp_path / "lookup.csv", rows), root


def multilabel(tmp_path: Path, **filters):
    path, root = lookup(tmp_path)
    settings = FilterSettings.from_config({"label_policy": "multilabel", "near_duplicates": "off", **filters})
    return filter_metadata("quilt", path, root, settings, None)


def by_video(table: pd.DataFrame, column: str) -> dict[str, object]:
    first = table.groupby("group", sort=True).first()
    return {vid: (list(v) if column == "labels" else v) for vid, v in first[column].items()}


def test_tasks_one_home() -> None:
    assert task_of_policy("primary") == MULTICLASS and task_of_policy("multilabel") == MULTILABEL
    assert head_activation(MULTILABEL) == "sigmoid" and head_activation(MULTICLASS) == "softmax"
    with pytest.raises(UserError, match="filters.label_policy"):
        task_of_policy("all")


def test_multilabel_keeps_every_listed_label_in_order(tmp_path: Path) -> None:
    table, report = multilabel(tmp_path)
    assert by_video(table, "labels") == {
        "aaaaaaaaaa1": ["Renal", "Breast"],
        "aaaaaaaaaa2": ["Breast", "Bone"],
        "aaaaaaaaaa3": ["Bone"],
        "aaaaaaaaaa4": ["Pulmonary"],  # Kidney removed by the vocabulary, the image kept
    }
    assert by_video(table, "label") == {
        "aaaaaaaaaa1": "Renal",
        "aaaaaaaaaa2": "Breast",
        "aaaaaaaaaa3": "Bone",
        "aaaaaaaaaa4": "Pulmonary",
    }
    assert report["class_counts"] == {"Bone": 4, "Breast": 4, "Pulmonary": 2, "Renal": 2}  # images per label
    assert report["label_entries"] == {"in": 14, "kept": 12, "removed": {"label_not_in_vocabulary": 2}}
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())


def test_primary_policy_is_unchanged(tmp_path: Path) -> None:
    path, root = lookup(tmp_path)
    table, report = filter_metadata("quilt", path, root, FilterSettings.from_config({"near_duplicates": "off"}), None)
    assert all(list(labels) == [label] for labels, label in zip(table["labels"], table["label"]))
    assert report["dropped"] == {"label_not_in_vocabulary": 2}  # Kidney was the first entry
    assert "label_entries" not in report


def test_class_filters_remove_labels_and_drop_images_left_without_one(tmp_path: Path) -> None:
    table, report = multilabel(tmp_path, exclude_classes=["Bone"], min_per_class=3)
    # Bone excluded: video 3 has no label left. Pulmonary and Renal: 2 images each (< 3), so
    # video 4 is left with nothing; video 1 keeps Breast, which becomes its first label.
    assert by_video(table, "labels") == {"aaaaaaaaaa1": ["Breast"], "aaaaaaaaaa2": ["Breast"]}
    assert by_video(table, "label") == {"aaaaaaaaaa1": "Breast", "aaaaaaaaaa2": "Breast"}
    assert report["dropped"] == {"class_excluded": 2, "class_too_small": 2}
    entries = report["label_entries"]
    assert entries["in"] == entries["kept"] + sum(entries["removed"].values())
    assert entries["removed"] == {"label_not_in_vocabulary": 0, "class_excluded": 2, "class_too_small": 2}


def test_top_k_counts_label_occurrences(tmp_path: Path) -> None:
    table, report = multilabel(tmp_path, top_k_classes=2)
    assert sorted(report["class_counts"]) == ["Bone", "Breast"]  # 4 images each, the others 2
    assert report["dropped"] == {"class_not_top_k": 2}  # video 4 (Pulmonary only)
    assert by_video(table, "label")["aaaaaaaaaa1"] == "Breast"


def test_csv_list_cells_and_malformed_ones(tmp_path: Path) -> None:
    root = tmp_path / "images"
    cells = {"a.jpg": "['x', 'y']", "b.jpg": "y", "c.jpg": "['x'", "d.jpg": "[]"}
    touch(root, *cells)
    with open(tmp_path / "meta.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels"])
        writer.writerows(cells.items())
    columns = {"path": "path", "label": "labels"}
    for policy, expected in (("multilabel", {"a.jpg": ["x", "y"], "b.jpg": ["y"]}), ("primary", None)):
        settings = FilterSettings.from_config({"label_policy": policy, "near_duplicates": "off"})
        table, report = filter_metadata("csv", tmp_path / "meta.csv", root, settings, columns)
        assert report["dropped"] == {"malformed_pathology": 1, "no_label": 1}
        got = {i: list(v) for i, v in zip(table["image_id"], table["labels"])}
        assert got == (expected or {"a.jpg": ["x"], "b.jpg": ["y"]})


def test_splits_carry_label_indices_and_count_occurrences(tmp_path: Path) -> None:
    path, root = lookup(tmp_path, images_per_video=6)
    settings = FilterSettings.from_config({"label_policy": "multilabel", "near_duplicates": "off"})
    table, _ = filter_metadata("quilt", path, root, settings, None)
    split = SplitSettings.from_config({"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}, seed=1)
    manifests, label_map, report = make_splits(table, split, MULTILABEL)
    assert label_map["task"] == MULTILABEL and label_map["classes"] == ["Bone", "Breast", "Pulmonary", "Renal"]
    for name, manifest in manifests.items():
        for labels, indices, first in zip(manifest["labels"], manifest["label_indices"], manifest["label_index"]):
            assert [label_map["classes"][i] for i in indices] == list(labels) and indices[0] == first
        counts = pd.Series([c for labels in manifest["labels"] for c in labels]).value_counts().to_dict()
        assert report["class_counts"][name] == counts
        assert report["counts"][name] == len(manifest)
    with pytest.raises(UserError, match="label_policy: multilabel"):
        make_splits(table, split, MULTICLASS)


def test_positive_weights_and_the_weighted_loss() -> None:
    import keras
    from quiltflow.models.train import MAX_POSITIVE_WEIGHT, WeightedBinaryCrossentropy, positive_weights_from_counts

    weights = positive_weights_from_counts([10, 1, 0, 100], 100)
    assert weights.tolist() == [9.0, 99.0, 1.0, 0.0]
    assert positive_weights_from_counts([1], 10_000).tolist() == [MAX_POSITIVE_WEIGHT]
    with pytest.raises(UserError):
        positive_weights_from_counts([11], 10)
    y = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    p = np.array([[0.9, 0.2, 0.4], [0.3, 0.6, 0.1]], np.float32)
    w = np.array([2.0, 3.0, 0.5])
    expected = -(w * y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1).mean()
    loss = WeightedBinaryCrossentropy(w)
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)
    plain = keras.losses.BinaryCrossentropy()(y, p)
    assert float(WeightedBinaryCrossentropy([1.0, 1.0, 1.0])(y, p)) == pytest.approx(float(plain), rel=1e-5)
    assert WeightedBinaryCrossentropy.from_config(loss.get_config()).positive_weights == w.tolist()


def test_predict_keeps_sigmoid_outputs_and_applies_thresholds() -> None:
    import tensorflow as tf
    from quiltflow.evaluation.evaluate import as_probabilities, predict

    class Fixed:  # a "model" whose sigmoid outputs are known
        name = "fixed"

        def predict_on_batch(self, images):
            return np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.3]], np.float32)[: len(images)]

    images = np.zeros((2, 4, 4, 3), np.uint8)
    labels = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels, np.array([b"a", b"b"]))).batch(2)
    table = predict(
        Fixed(), ds, ["x", "y", "z"], task=MULTILABEL, thresholds=[0.5, 0.8, 0.25], primary={"a": 2, "b": 2}
    )
    assert np.stack(table["pred_multi_hot"]).tolist() == [[1, 0, 1], [0, 0, 1]]
    assert np.stack(table["true_multi_hot"]).tolist() == [[1, 0, 1], [0, 0, 1]]
    assert table["true_label"].tolist() == [2, 2] and table["pred_label"].tolist() == [0, 1]
    assert np.allclose(np.stack(table["probabilities"])[0], [0.9, 0.2, 0.6])  # no softmax
    assert as_probabilities(np.array([[1.0 + 1e-7, -1e-7]]), "m", MULTILABEL).tolist() == [[1.0, 0.0]]
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):  # logits? cannot tell: refused
        as_probabilities(np.array([[2.0, -2.0]]), "m", MULTILABEL)


# --- end to end ---------------------------------------------------------------------------------


def test_end_to_end_multilabel_cross_validation(multilabel_cv_run: Path) -> None:
    results = multilabel_cv_run / "results"
    assert read_task(results / "splits" / "label_map.json") == MULTILABEL
    report = json.loads((results / "metadata" / "filter_report.json").read_text())
    assert report["label_entries"]["in"] == report["label_entries"]["kept"] + sum(
        report["label_entries"]["removed"].values()
    )
    assert set(report["dropped"]) <= set(DROP_REASONS)
    for model in ("custom_cnn", "resnet50_frozen", "resnet50_finetune"):
        metrics = json.loads((results / "metrics" / f"{model}.json").read_text())
        assert metrics["task"] == MULTILABEL and metrics["cv"]["folds"] == 2
        assert {"map_macro", "auc_macro", "f1_micro", "hamming_loss", "top1_in_labels"} <= set(metrics["metrics"])
        pooled = pd.read_parquet(results / "predictions" / f"{model}.parquet")
        assert pooled["image_id"].is_unique and set(pooled["fold"]) == {0, 1}
        classes = metrics["metrics"]["class_names"]
        per_label = pooled[[f"prob_{c}" for c in classes]].to_numpy()  # one column per label too
        assert np.array_equal(per_label, np.stack(pooled["probabilities"]))
        assert np.stack(pooled["true_multi_hot"]).shape == per_label.shape
    comparison = json.loads((results / "comparison.json").read_text())
    names = {row["name"] for row in comparison["rows"]}
    assert {"label_frequency_baseline", "ensemble", "custom_cnn"} <= names
    assert (results / "plots" / "per_label_ap.png").stat().st_size > 0


def test_thresholds_are_fitted_on_the_validation_videos_only(multilabel_cv_run: Path) -> None:
    """The decision thresholds are a fitted step: recomputed from the run's validation buckets
    they equal train_info's, and no validation video is a test video of that run."""
    import keras
    import quiltflow.models.builders  # noqa: F401  (registers the custom layers)
    from quiltflow.core.cv import run_buckets
    from quiltflow.models.pipeline import make_dataset
    from quiltflow.models.thresholds import f1_optimal_thresholds

    results = multilabel_cv_run / "results"
    classes = json.loads((results / "splits" / "label_map.json").read_text())["classes"]
    for fold in (0, 1):
        buckets = run_buckets(fold, 2)
        manifests = {
            part: pd.concat([pd.read_parquet(results / "splits" / f"{b}.parquet") for b in names])
            for part, names in buckets.items()
        }
        assert not set(manifests["val"]["group"]) & set(manifests["test"]["group"])
        run_dir = next((results / "models").glob(f"custom_cnn/fold{fold}-seed*"))
        info = json.loads((run_dir / "train_info.json").read_text())
        model = keras.models.load_model(run_dir / "model.keras", compile=False)
        val = make_dataset([results / "tfrecords" / f"{b}.index.json" for b in buckets["val"]], 16, training=False)
        probs = np.concatenate([model.predict_on_batch(x) for x, _ in val])
        truth = np.concatenate([y.numpy() for _, y in val]).astype(np.int8)
        expected = f1_optimal_thresholds(truth, probs)
        assert [info["thresholds"][c] for c in classes] == pytest.approx(expected.tolist(), abs=1e-6)


def test_weighted_loss_keeps_a_gradient_when_the_sigmoid_saturates() -> None:
    """Huge logits (a random frozen ResNet's features) saturate the sigmoid: the loss must still
    push the wrong label back (clipping probabilities would leave a zero gradient)."""
    import keras
    import tensorflow as tf
    from quiltflow.models.train import WeightedBinaryCrossentropy

    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid", use_bias=False)(inputs))
    model.layers[-1].set_weights([np.array([[-1.0, 1.0]], np.float32)])
    x, y = np.array([[1e4]], np.float32), np.array([[1.0, 0.0]], np.float32)  # both labels wrong
    for loss in (WeightedBinaryCrossentropy([2.0, 0.5]), keras.losses.BinaryCrossentropy()):
        with tf.GradientTape() as tape:
            value = loss(y, model(x))
        gradient = tape.gradient(value, model.trainable_weights)[0].numpy()
        assert np.isfinite(float(value)) and float(value) > 100
        assert gradient[0, 0] < 0 < gradient[0, 1]  # raise label 0, lower label 1


def test_predict_and_explain_a_multilabel_cv_run(multilabel_cv_run: Path, tmp_path: Path) -> None:
    """`snakemake predict explain` on the multi-label run: labels at the runs' mean thresholds,
    Grad-CAM galleries of sigmoid models."""
    import shutil

    import yaml

    workdir = clone_run(multilabel_cv_run, tmp_path / "run")  # the shared run stays as it is
    images = tmp_path / "new images"
    images.mkdir()
    manifest = pd.read_parquet(workdir / "results" / "splits" / "fold0a.parquet")
    for image_id in manifest["image_id"][:4]:
        shutil.copy(workdir / "resources" / "demo" / "images" / image_id, images / Path(image_id).name)
    extra = tmp_path / "predict.yaml"
    extra.write_text(yaml.safe_dump({"predict": {"images": str(images), "models": ["custom_cnn"]}}))
    snakemake(workdir, "predict", "explain", configfiles=(*MULTILABEL_CONFIGS, str(extra)))
    results = workdir / "results"
    table = pd.read_parquet(results / "predict" / "custom_cnn.parquet")
    classes = json.loads((results / "splits" / "label_map.json").read_text())["classes"]
    probs = table[[f"prob_{c}" for c in classes]].to_numpy()
    thresholds = np.mean(
        [
            [json.loads(p.read_text())["thresholds"][c] for c in classes]
            for p in sorted((results / "models" / "custom_cnn").glob("fold*/train_info.json"))
        ],
        axis=0,
    )
    expected = ["|".join(c for c, on in zip(classes, row >= thresholds) if on) for row in probs]
    assert table["status"].eq("ok").all() and table["pred_labels"].tolist() == expected
    index = json.loads((results / "explain" / "custom_cnn" / "index.json").read_text())
    assert index["task"] == MULTILABEL
