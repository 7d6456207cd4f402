"""quiltflow.evaluation.evaluate: predictions of a tiny Keras model, and the evaluate_model files end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.evaluation import evaluate  # noqa: E402
from quiltflow.records.metrics_document import METRICS_SCHEMA_VERSION, load_metrics_document  # noqa: E402
from quiltflow.records.predictions import read_predictions
from workflow_runner import run_workflow_script  # noqa: E402

CLASSES = ["adeno", "benign", "squamous"]
N = 10


def tiny_model(softmax: bool = True) -> keras.Model:
    """Mean colour -> 3 classes; fixed weights so that image i's dominant channel is its class."""
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)  # casts uint8 to float, like the real models
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax" if softmax else None)
    outputs = dense(x)
    dense.set_weights([np.eye(3, dtype=np.float32) * 10.0, np.zeros(3, np.float32)])
    return keras.Model(inputs, outputs, name="tiny")


def tiny_data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = np.arange(N, dtype=np.int32) % 3
    images = np.zeros((N, 8, 8, 3), np.uint8)
    images[np.arange(N), :, :, labels] = 200  # dominant channel = class
    images[9, :, :, :] = 0
    images[9, :, :, 1] = 250  # image 9 (class 0) looks like class 1: one mistake
    ids = [f"slide{i}.jpg" for i in range(N)]
    return images, labels, ids


def tiny_dataset(batch_size: int = 4) -> tf.data.Dataset:
    images, labels, ids = tiny_data()
    return tf.data.Dataset.from_tensor_slices((images, labels, ids)).batch(batch_size)


GROUPS = {f"slide{i}.jpg": f"video{i // 2}" for i in range(N)}


@pytest.mark.parametrize("softmax", [True, False])
def test_predict_tiny_model(softmax):
    table = evaluate.predict(tiny_model(softmax), tiny_dataset(), CLASSES, groups=GROUPS)
    _, labels, ids = tiny_data()
    assert table.columns.tolist() == ["image_id", "group", "true_label", "pred_label", "probabilities"]
    assert table["image_id"].tolist() == ids
    assert table["group"].tolist() == [GROUPS[i] for i in ids]
    assert table["true_label"].tolist() == labels.tolist()
    expected = labels.copy()
    expected[9] = 1
    assert table["pred_label"].tolist() == expected.tolist()
    probs = np.stack(table["probabilities"].to_list())
    assert probs.shape == (N, 3) and probs.dtype == np.float32
    # Logit outputs get a softmax: probabilities always sum to 1.
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == table["pred_label"]).all()


def test_predict_errors():
    with pytest.raises(UserError, match="does not match 4 classes"):
        evaluate.predict(tiny_model(), tiny_dataset(), CLASSES + ["extra"])
    with pytest.raises(UserError, match="no row for image_id slide0.jpg"):
        evaluate.predict(tiny_model(), tiny_dataset(), CLASSES, groups={})
    images, labels, _ = tiny_data()
    no_ids = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with pytest.raises(UserError, match="with_ids=True"):
        evaluate.predict(tiny_model(), no_ids, CLASSES)


def _inputs(tmp_path: Path, skipped: dict[str, int], extra_manifest_rows: int = 0) -> dict[str, str]:
    model_path = tmp_path / "model.keras"
    tiny_model().save(model_path)
    ids = list(GROUPS) + [f"broken{i}.jpg" for i in range(extra_manifest_rows)]
    manifest = tmp_path / "test.parquet"
    pd.DataFrame({"image_id": ids, "group": [GROUPS.get(i, "v") for i in ids]}).to_parquet(manifest)
    files = {
        "label_map": {"classes": CLASSES, "class_to_index": {c: i for i, c in enumerate(CLASSES)}},
        "info": {
            "model": "tiny",
            "architecture": "custom_cnn",
            "weights": "none",
            "train_seconds": 4.2,
            "device": "CPU",
        },
        "test": {
            "split": "test",
            "image_size": 8,
            "num_records": N,
            "num_classes": 3,
            "shards": [],
            "skipped_by_reason": skipped,
        },
    }
    paths = {}
    for key, content in files.items():
        paths[key] = str(tmp_path / f"{key}.json")
        Path(paths[key]).write_text(json.dumps(content))
    return {
        "model_path": str(model_path),
        "test_index_path": paths["test"],
        "manifest_path": str(manifest),
        "label_map_path": paths["label_map"],
        "info_path": paths["info"],
        "predictions_path": str(tmp_path / "out" / "tiny.parquet"),
        "metrics_path": str(tmp_path / "out" / "tiny.json"),
    }


def test_evaluate_model_writes_reconciled_files(tmp_path, monkeypatch):
    # The TFRecord reader is another stage's: feed the same batches it would yield.
    monkeypatch.setattr(evaluate, "_make_test_dataset", lambda index, batch_size: tiny_dataset(batch_size))
    paths = _inputs(tmp_path, skipped={"unreadable": 2}, extra_manifest_rows=2)
    doc = evaluate.evaluate_model(**paths, model_name="tiny", top_k=2, batch_size=3)

    saved = load_metrics_document(paths["metrics_path"])  # validates against the JSON Schema
    assert saved == json.loads(json.dumps(doc))
    assert saved["schema_version"] == METRICS_SCHEMA_VERSION
    assert saved["architecture"] == "custom_cnn" and saved["weights"] == "none"
    assert saved["timing"]["train_seconds"] == 4.2 and saved["timing"]["eval_seconds"] > 0
    assert saved["dataset"]["n_manifest"] == 12 and saved["dataset"]["skipped_by_reason"] == {"unreadable": 2}
    assert saved["metrics"]["n_test"] == N
    assert saved["metrics"]["accuracy"] == pytest.approx(9 / 10)
    table = read_predictions(paths["predictions_path"])
    assert len(table) == N and table["group"].iloc[3] == "video1"


def test_evaluate_model_counts_must_reconcile(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "_make_test_dataset", lambda index, batch_size: tiny_dataset(batch_size))
    paths = _inputs(tmp_path, skipped={}, extra_manifest_rows=1)  # one manifest row unaccounted for
    with pytest.raises(UserError, match="11 rows but 10 were predicted and 0 skipped"):
        evaluate.evaluate_model(**paths, model_name="tiny", top_k=2, batch_size=4)
    assert not Path(paths["metrics_path"]).exists()


def test_evaluate_script_on_real_tiles(tmp_path, lc25000):
    """Real H&E tiles -> TFRecord shard (one missing image) -> evaluate_model.py -> reconciled metrics."""
    from quiltflow.core.settings import ShardSettings
    from quiltflow.data.shards import write_shard
    from quiltflow.records.shard_index import index_split

    classes = ["lung_aca", "lung_n", "lung_scc"]
    rows = [
        {"image_id": f"{c}/{f.name}", "label_index": i, "group": f.stem, "label": c}
        for i, c in enumerate(classes)
        for f in sorted((lc25000 / c).glob("*.jpeg"))[:4]
    ]
    rows.append({"image_id": "lung_n/missing.jpeg", "label_index": 1, "group": "g", "label": "lung_n"})
    manifest = tmp_path / "test.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"classes": classes, "class_to_index": {c: i for i, c in enumerate(classes)}}))
    shard, report = tmp_path / "test-00000-of-00001.tfrecord", tmp_path / "test-00000-of-00001.tfrecord.report.json"
    shard_settings = ShardSettings.from_config({"jpeg_quality": 90}, image_size=32)
    write_shard(manifest, lc25000, 0, 1, shard_settings, shard, report)
    index_split("test", shard_settings, [shard], [report], label_map, tmp_path / "test.index.json")

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "model.keras")
    info = tmp_path / "train_info.json"
    info.write_text(json.dumps({"model": "cnn", "architecture": "custom_cnn", "weights": "none", "train_seconds": 1.0}))
    run_workflow_script(
        "evaluate_model.py",
        input={
            "model": str(tmp_path / "model.keras"),
            "test": str(tmp_path / "test.index.json"),
            "manifest": str(manifest),
            "label_map": str(label_map),
            "info": str(info),
        },
        output={"predictions": str(tmp_path / "pred.parquet"), "metrics": str(tmp_path / "metrics.json")},
        params={"model": "cnn", "top_k": 2, "batch_size": 5, "fold": 0, "seed": 42, "folds": 1},
        log=tmp_path / "eval.log",
    )
    doc = load_metrics_document(tmp_path / "metrics.json")
    assert doc["metrics"]["n_test"] == 12 and doc["dataset"]["n_manifest"] == 13
    assert sum(doc["dataset"]["skipped_by_reason"].values()) == 1
    table = read_predictions(tmp_path / "pred.parquet")
    assert sorted(table["image_id"]) == sorted(r["image_id"] for r in rows[:-1])
    assert table.set_index("image_id")["group"].to_dict() == {r["image_id"]: r["group"] for r in rows[:-1]}
