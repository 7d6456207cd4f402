"""quiltflow.evaluation.metrics: hand-checked metric values, the metrics JSON schema, predictions Parquet."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.core.jsonio import sha256_file, write_json  # noqa: E402
from quiltflow.evaluation.metrics import compute_metrics  # noqa: E402
from quiltflow.records.metrics_document import METRICS_SCHEMA_VERSION, build_metrics_document, load_metrics_document
from quiltflow.records.predictions import PREDICTIONS_ARROW_SCHEMA, read_predictions, write_predictions

CLASSES = ["adeno", "benign", "squamous"]
# Six images. Misclassified: img1 (true 0 -> 1, true class 2nd) and img5 (true 2 -> 0, true class last).
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
PROBS = [
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.5, 0.3],
    [0.1, 0.1, 0.8],
    [0.5, 0.4, 0.1],
]


def hand_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{i}.jpg" for i in range(6)],
            "group": ["v1", "v1", "v2", "v2", "v3", "v3"],
            "true_label": np.array(Y_TRUE, np.int32),
            "pred_label": np.array(Y_PRED, np.int32),
            "probabilities": [np.array(p, np.float32) for p in PROBS],
        }
    )


def test_metrics_match_hand_computed_values():
    m = compute_metrics(hand_table(), CLASSES, top_k=2)
    assert m["n_test"] == 6 and m["n_classes"] == 3 and m["class_names"] == CLASSES
    assert m["accuracy"] == pytest.approx(4 / 6)
    # Confusion matrix, rows true / columns predicted.
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # Per class: adeno P=1/2 R=1/2; benign P=2/3 R=1; squamous P=1 R=1/2.
    f1 = {"adeno": 0.5, "benign": 0.8, "squamous": 2 / 3}
    for name, value in f1.items():
        assert m["per_class"][name]["f1"] == pytest.approx(value)
        assert m["per_class"][name]["support"] == 2
    assert m["per_class"]["benign"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["squamous"]["recall"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx(sum(f1.values()) / 3)
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    # Equal supports: weighted == macro here.
    assert m["f1_weighted"] == pytest.approx(m["f1_macro"])
    # Top-2: only img5's true class is ranked last.
    assert m["top_k"] == 2 and m["top_k_accuracy"] == pytest.approx(5 / 6)
    expected_loss = -np.mean([math.log(PROBS[i][t]) for i, t in enumerate(Y_TRUE)])
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_top_k_only_when_smaller_than_class_count():
    assert compute_metrics(hand_table(), CLASSES, top_k=3)["top_k_accuracy"] is None


def test_absent_class_keeps_full_confusion_matrix():
    table = hand_table()
    four = table.copy()
    four["probabilities"] = [np.append(p * 0.9, np.float32(0.1)).astype(np.float32) for p in table["probabilities"]]
    m = compute_metrics(four, CLASSES + ["unused"], top_k=2)
    assert len(m["confusion_matrix"]) == 4 and m["per_class"]["unused"]["support"] == 0
    # Macro averages ignore a class absent from both true and predicted labels (scikit-learn default).
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.assign(true_label=np.array([0, 0, 1, 1, 2, 3], np.int32)), "row 5"),
        (lambda t: t.assign(probabilities=[np.array([0.5, 0.5], np.float32)] * 6), "2 entries"),
        (lambda t: t.assign(probabilities=[np.array([0.9, 0.9, 0.1], np.float32)] * 6), "not a distribution"),
        (lambda t: t.iloc[:0], "no predictions"),
        (lambda t: t.drop(columns=["probabilities"]), "probabilities"),
    ],
)
def test_bad_predictions_raise_user_error(change, message):
    with pytest.raises(UserError, match=message):
        compute_metrics(change(hand_table()), CLASSES, top_k=2)


def test_predictions_parquet_roundtrip_has_contract_types(tmp_path):
    path = tmp_path / "pred.parquet"
    write_predictions(hand_table(), path)
    assert pq.read_schema(path).equals(PREDICTIONS_ARROW_SCHEMA, check_metadata=False)
    back = read_predictions(path)
    assert back["image_id"].tolist() == hand_table()["image_id"].tolist()
    # Metrics are recomputable from the Parquet alone.
    assert compute_metrics(back, CLASSES, top_k=2) == compute_metrics(hand_table(), CLASSES, top_k=2)


def _document(tmp_path: Path) -> dict:
    manifest = tmp_path / "test.parquet"
    manifest.write_bytes(b"stand-in manifest")
    return build_metrics_document(
        model="cnn",
        architecture="custom_cnn",
        weights="none",
        dataset_sha256=sha256_file(manifest),
        train_seconds=12.5,
        eval_seconds=0.4,
        metrics=compute_metrics(hand_table(), CLASSES, top_k=2),
        test_manifest=str(manifest),
        n_manifest=7,
        skipped_by_reason={"unreadable": 1},
    )


def test_metrics_document_validates_and_roundtrips(tmp_path):
    doc = _document(tmp_path)
    assert doc["schema_version"] == METRICS_SCHEMA_VERSION == 1
    assert len(doc["dataset"]["sha256"]) == 64
    path = tmp_path / "cnn.json"
    write_json(doc, path)
    assert load_metrics_document(path) == json.loads(json.dumps(doc))


def test_metrics_document_rejects_wrong_version_and_bad_counts(tmp_path):
    doc = _document(tmp_path)
    path = tmp_path / "m.json"
    write_json({**doc, "schema_version": 2}, path)
    with pytest.raises(UserError, match="schema_version 2"):
        load_metrics_document(path)
    write_json({**doc, "dataset": {**doc["dataset"], "n_manifest": 9}}, path)
    with pytest.raises(UserError, match="n_manifest=9"):
        load_metrics_document(path)
    bad_metrics = {**doc["metrics"], "accuracy": 1.5}
    write_json({**doc, "metrics": bad_metrics}, path)
    with pytest.raises(UserError, match="metrics.accuracy"):
        load_metrics_document(path)


def test_provenance_records_shared_by_every_run_are_copied_once():
    from quiltflow.records.metrics_document import copy_provenance

    encoder = {"name": "lunit", "sha256": "ab" * 32, "licence": "other"}
    runs = [{"encoder": encoder, "pretraining": {"pool_images": 10}}, {"encoder": dict(encoder)}]
    document = copy_provenance({}, runs)
    assert document == {"encoder": encoder}  # pretraining differs per fold: each run keeps its own
    assert copy_provenance({}, [{"encoder": encoder}, {"encoder": {**encoder, "sha256": "cd" * 32}}]) == {}
    assert copy_provenance({}, [{}]) == {} and copy_provenance({}, []) == {}
