"""quiltflow.models.thresholds and the multi-label branch of quiltflow.metrics/pooling (issue 16).

Hand-made cases with values worked out by hand, and random cases checked against scikit-learn
and a brute-force threshold search.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import sha256_file, write_json
from quiltflow.evaluation.metrics import compute_metrics
from quiltflow.evaluation.multilabel_metrics import multilabel_metrics
from quiltflow.evaluation.pooling import pool_runs, run_summary
from quiltflow.models.thresholds import apply_thresholds, f1_optimal_thresholds, multi_hot
from quiltflow.records.metrics_document import build_metrics_document, load_metrics_document, validate_metrics_document
from quiltflow.records.predictions import PREDICTIONS_ARROW_SCHEMA, read_predictions, write_predictions

CLASSES = ["adeno", "benign", "squamous"]
# Five images, three labels. Label 2 ("squamous") has no positive test image: ap/auc undefined.
Y_TRUE = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]]
PROBS = [
    [0.9, 0.2, 0.1],
    [0.6, 0.7, 0.3],
    [0.4, 0.8, 0.6],
    [0.3, 0.1, 0.2],
    [0.2, 0.6, 0.1],
]
Y_PRED = [[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0]]


# --- multi-hot encoding ------------------------------------------------------------------------


def test_multi_hot_encodes_lists_with_duplicates_and_empty_rows():
    out = multi_hot([[0, 2], [1], [], [2, 2, 0]], 3)
    assert out.dtype == np.int8
    assert out.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1]]
    assert multi_hot([], 4).shape == (0, 4)


@pytest.mark.parametrize("bad", [3, -1])
def test_multi_hot_index_outside_range_names_the_row(bad):
    with pytest.raises(UserError, match=rf"row 1: label index {bad} outside 0\.\.2"):
        multi_hot([[0], [1, bad]], 3)


# --- thresholds --------------------------------------------------------------------------------


def test_thresholds_hand_made_cases():
    y = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1]])
    p = np.array([[0.9, 0.8, 0.3, 0.5], [0.8, 0.1, 0.2, 0.5], [0.3, 0.7, 0.9, 0.5], [0.1, 0.2, 0.1, 0.5]])
    t = f1_optimal_thresholds(y, p)
    assert t.dtype == np.float64 and t.shape == (4,)
    # Label 0: separable, best cut below 0.8 (F1 = 1): midway to the next lower score 0.3.
    assert t[0] == pytest.approx(0.55)
    # Label 1: scores .8(+) .7(+) .2(-) .1(-)... positives 0.8 and 0.7 -> F1 = 1 at >= 0.7; next lower is 0.2.
    assert t[1] == pytest.approx(0.45)
    # Label 2: no positive: nothing to learn, 0.5.
    assert t[2] == 0.5
    # Label 3: one distinct score, flagging everything is the only useful cut: midway to 0.0.
    assert t[3] == pytest.approx(0.25)
    assert apply_thresholds(p, t).tolist() == [[1, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]


def test_thresholds_best_cut_and_ties_go_to_the_lowest_threshold():
    # Label 0 (P=2): cuts .9 -> F1 2/3, .8 -> 1/2, .7 -> 4/5 (best), .05 -> 2/3: midway .7 / .05.
    # Label 1 (P=3): cuts .9 -> 1/2, .6 -> 2/5, .5 -> 1/3, .4 -> 4/7, .3 -> 3/4 (best, lowest): midway to 0.
    y = np.array([[1, 1], [0, 0], [1, 0], [0, 1], [0, 1]])
    p = np.array([[0.9, 0.9], [0.8, 0.6], [0.7, 0.5], [0.05, 0.4], [0.01, 0.3]])
    t = f1_optimal_thresholds(y, p)
    assert t[0] == pytest.approx((0.7 + 0.05) / 2)
    assert t[1] == pytest.approx(0.15)
    # A tie in F1 (P=2): cut .9 -> 2/(1+2) = 2/3, cut .6 -> 2*2/(4+2) = 2/3: the lowest (.6) wins.
    y_tie = np.array([[1], [0], [0], [1]])
    p_tie = np.array([[0.9], [0.8], [0.7], [0.6]])
    assert f1_optimal_thresholds(y_tie, p_tie)[0] == pytest.approx(0.3)


def _brute_force_best_f1(y: np.ndarray, s: np.ndarray) -> float:
    return max(f1_score(y, (s >= c).astype(int), zero_division=0) for c in np.unique(s))


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_match_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 5
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.6, c)).astype(np.int8)
    # Coarse scores force many ties; informative for some labels.
    p = np.clip(np.round(0.3 * y + rng.random((n, c)) * 0.7, 1 + seed % 3), 0, 1)
    t = f1_optimal_thresholds(y, p)
    decided = apply_thresholds(p, t)
    for j in range(c):
        s = p[:, j]
        best = _brute_force_best_f1(y[:, j], s)
        assert f1_score(y[:, j], decided[:, j], zero_division=0) == pytest.approx(best, abs=1e-12)
        # Strictly between the chosen score and the next lower distinct score (or 0.0).
        chosen = s[s >= t[j]].min()
        lower = s[s < t[j]].max() if (s < t[j]).any() else 0.0
        assert lower < t[j] <= chosen and t[j] == pytest.approx((chosen + lower) / 2)
        # Ties go to the lowest threshold: no lower candidate reaches the same F1.
        for cand in np.unique(s[s < t[j]]):
            assert f1_score(y[:, j], (s >= cand).astype(int), zero_division=0) < best - 1e-12


def test_thresholds_and_apply_reject_bad_input():
    with pytest.raises(UserError, match="row 1 label 0 is 2"):
        f1_optimal_thresholds([[1], [2]], [[0.5], [0.5]])
    with pytest.raises(UserError, match="row 0 label 1"):
        f1_optimal_thresholds([[1, 0]], [[0.5, 1.5]])
    with pytest.raises(UserError, match="shapes differ"):
        f1_optimal_thresholds([[1, 0]], [[0.5]])
    with pytest.raises(UserError, match="2 labels"):
        apply_thresholds([[0.5, 0.2]], [0.5])
    assert apply_thresholds([[0.5, 0.2]], [0.5, 0.3]).tolist() == [[1, 0]]


# --- metrics -----------------------------------------------------------------------------------


def test_multilabel_metrics_hand_made():
    m = multilabel_metrics(np.array(Y_TRUE), np.array(PROBS), np.array(Y_PRED), CLASSES)
    assert m["n_test"] == 5 and m["n_classes"] == 3 and m["class_names"] == CLASSES
    adeno, benign, squamous = (m["per_class"][c] for c in CLASSES)
    # adeno: true {0,1,4}, predicted {0,1}: P=1, R=2/3, F1=0.8. Ranked .9(+) .6(+) .4 .3 .2(+):
    # AP = (1 + 1 + 3/5) / 3; AUC: positives beat negatives in 4 of 6 pairs.
    assert adeno == {"ap": pytest.approx(2.6 / 3), "auc": pytest.approx(4 / 6), "precision": 1.0,
                     "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}  # fmt: skip
    # benign: true {1,2,4}, predicted {1,2,4}: all 1. Ranked .8(+) .7(+) .6(+) .2 .1: AP = AUC = 1.
    assert benign == {"ap": 1.0, "auc": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}
    # squamous: no positive: ap/auc null; one false positive -> P = R = F1 = 0.
    assert squamous == {"ap": None, "auc": None, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["map_macro"] == pytest.approx((2.6 / 3 + 1) / 2)
    assert m["auc_macro"] == pytest.approx((4 / 6 + 1) / 2)
    # Micro: TP = 5, FP = 1, FN = 1 -> F1 = 10 / 12. Macro over present labels (squamous predicted once).
    assert m["f1_micro"] == pytest.approx(10 / 12)
    assert m["f1_macro"] == pytest.approx((0.8 + 1 + 0) / 3)
    # Wrong cells: (2, squamous), (4, adeno) of 15.
    assert m["hamming_loss"] == pytest.approx(2 / 15)
    # Exact matches: images 0, 1, 3.
    assert m["subset_accuracy"] == pytest.approx(3 / 5)
    # Top-1 labels: adeno, benign, benign, adeno (image 3 has no label), benign -> 4 of 5 true.
    assert m["top1_in_labels"] == pytest.approx(4 / 5)
    assert m["label_cardinality"] == pytest.approx(6 / 5)


def _sklearn_reference(y, p, d):
    per = []
    for j in range(y.shape[1]):
        ap = average_precision_score(y[:, j], p[:, j]) if y[:, j].any() else None
        auc = roc_auc_score(y[:, j], p[:, j]) if 0 < y[:, j].sum() < len(y) else None
        per.append((ap, auc))
    present = [j for j in range(y.shape[1]) if y[:, j].any() or d[:, j].any()]
    aps = [a for a, _ in per if a is not None]
    aucs = [a for _, a in per if a is not None]
    return per, {
        "map_macro": float(np.mean(aps)) if aps else None,
        "auc_macro": float(np.mean(aucs)) if aucs else None,
        "f1_micro": f1_score(y, d, average="micro", zero_division=0),
        "f1_macro": f1_score(y, d, average="macro", labels=present, zero_division=0),
        "hamming_loss": hamming_loss(y, d),
        "subset_accuracy": accuracy_score(y, d),
    }


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_metrics_match_scikit_learn_on_random_data(seed):
    rng = np.random.default_rng(100 + seed)
    n, c = 40, 6
    y = (rng.random((n, c)) < 0.35).astype(np.int8)
    y[:, 5] = 0  # one label never true: ap/auc undefined
    y[:, 4] = 1 if seed % 2 else y[:, 4]  # sometimes a label always true: auc undefined, ap 1
    p = np.clip(0.4 * y + 0.6 * rng.random((n, c)), 0, 1)
    d = apply_thresholds(p, f1_optimal_thresholds(y, p))
    names = [f"c{j}" for j in range(c)]
    m = multilabel_metrics(y, p, d, names)
    per, ref = _sklearn_reference(y, p, d)
    for key, value in ref.items():
        assert m[key] == (None if value is None else pytest.approx(value, abs=1e-12)), key
    for j, name in enumerate(names):
        got = m["per_class"][name]
        assert (got["ap"], got["auc"]) == tuple(None if v is None else pytest.approx(v) for v in per[j])
        assert got["precision"] == pytest.approx(precision_score(y[:, j], d[:, j], zero_division=0))
        assert got["recall"] == pytest.approx(recall_score(y[:, j], d[:, j], zero_division=0))
        assert got["f1"] == pytest.approx(f1_score(y[:, j], d[:, j], zero_division=0))
        assert got["support"] == int(y[:, j].sum())
    assert m["per_class"]["c5"]["ap"] is None and m["per_class"]["c5"]["auc"] is None
    top1 = y[np.arange(n), p.argmax(axis=1)].mean()
    assert m["top1_in_labels"] == pytest.approx(top1)
    assert m["label_cardinality"] == pytest.approx(y.sum() / n)


def test_macro_ranking_means_are_none_without_any_defined_label():
    y = np.zeros((3, 2), np.int8)
    m = multilabel_metrics(y, np.full((3, 2), 0.2), y, ["a", "b"])
    assert m["map_macro"] is None and m["auc_macro"] is None
    assert m["f1_macro"] == 0.0 and m["subset_accuracy"] == 1.0 and m["hamming_loss"] == 0.0


@pytest.mark.parametrize(
    "y, p, d, names, message",
    [
        ([[1, 0]], [[0.5, 0.5]], [[1, 0]], ["a"], "2 labels, label map has 1"),
        ([[1, 0]], [[0.5, np.nan]], [[1, 0]], ["a", "b"], "row 0 label 1 is nan"),
        ([[1, 0]], [[0.5, 0.5]], [[1, 3]], ["a", "b"], "pred_multi_hot: row 0 label 1 is 3"),
        ([[1, 0]], [[0.5, 0.5, 0.1]], [[1, 0]], ["a", "b"], "shapes differ"),
        (np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], "no predictions"),
    ],
)
def test_multilabel_metrics_reject_bad_input(y, p, d, names, message):
    with pytest.raises(UserError, match=message):
        multilabel_metrics(y, p, d, names)


# --- predictions table, metrics document, pooling ----------------------------------------------


def multilabel_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{i}.jpg" for i in range(5)],
            "group": ["v1", "v1", "v2", "v3", "v3"],
            "true_label": np.array([0, 0, 1, 0, 0], np.int32),
            "pred_label": np.array([0, 1, 1, 0, 1], np.int32),
            "probabilities": [np.array(p, np.float32) for p in PROBS],
            "true_multi_hot": [np.array(r, np.int8) for r in Y_TRUE],
            "pred_multi_hot": [np.array(r, np.int8) for r in Y_PRED],
        }
    )


def test_multilabel_predictions_roundtrip_with_contract_types(tmp_path):
    path = tmp_path / "pred.parquet"
    table = multilabel_table().assign(fold=np.int32(0), seed=np.int32(7))
    write_predictions(table, path)
    expected = PREDICTIONS_ARROW_SCHEMA
    for name, kind in [("true_multi_hot", pa.list_(pa.int8())), ("pred_multi_hot", pa.list_(pa.int8())),
                       ("fold", pa.int32()), ("seed", pa.int32())]:  # fmt: skip
        expected = expected.append(pa.field(name, kind))
    assert pq.read_schema(path).equals(expected, check_metadata=False)
    back = read_predictions(path)
    assert [list(r) for r in back["true_multi_hot"]] == Y_TRUE
    assert [list(r) for r in back["pred_multi_hot"]] == Y_PRED
    # Probabilities are not renormalised (rows do not sum to 1) and metrics are recomputable.
    assert np.allclose(np.stack(back["probabilities"]), np.array(PROBS, np.float32))
    from_file = compute_metrics(back, CLASSES, top_k=1, task="multilabel")
    assert from_file == compute_metrics(multilabel_table(), CLASSES, top_k=1, task="multilabel")
    assert from_file["subset_accuracy"] == pytest.approx(3 / 5)


def test_multiclass_parquet_has_no_multi_hot_columns(tmp_path):
    table = multilabel_table().drop(columns=["true_multi_hot", "pred_multi_hot"])
    table["probabilities"] = [np.array([0.5, 0.25, 0.25], np.float32)] * 5
    write_predictions(table, tmp_path / "p.parquet")
    assert pq.read_schema(tmp_path / "p.parquet").equals(PREDICTIONS_ARROW_SCHEMA, check_metadata=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop(columns=["pred_multi_hot"]), "missing column.*pred_multi_hot"),
        (lambda t: t.assign(true_multi_hot=[np.array([1, 0], np.int8)] * 5), "true_multi_hot has 2 entries"),
        (lambda t: t.assign(pred_multi_hot=[np.array([1, 2, 0], np.int8)] * 5), r"row 0 \(image_id img0.jpg\) pred"),
        (lambda t: t.assign(probabilities=[np.array([0.5, 1.2, 0.1], np.float32)] * 5), "not all in"),
        (lambda t: t.assign(true_label=np.array([0, 0, 1, 0, 3], np.int32)), "row 4"),
    ],
)
def test_compute_metrics_multilabel_rejects_bad_tables(change, message):
    with pytest.raises(UserError, match=message):
        compute_metrics(change(multilabel_table()), CLASSES, top_k=1, task="multilabel")


def test_unknown_task_is_refused():
    with pytest.raises(UserError, match="task 'ranking'"):
        compute_metrics(multilabel_table(), CLASSES, top_k=1, task="ranking")


def _document(tmp_path: Path, task: str) -> dict:
    manifest = tmp_path / "test.parquet"
    manifest.write_bytes(b"stand-in manifest")
    table = multilabel_table()
    if task == "multiclass":
        table["probabilities"] = [np.array([0.5, 0.25, 0.25], np.float32)] * 5
    return build_metrics_document(
        model="cnn",
        architecture="custom_cnn",
        weights="none",
        dataset_sha256=sha256_file(manifest),
        train_seconds=3.0,
        eval_seconds=0.5,
        metrics=compute_metrics(table, CLASSES, top_k=2, task=task),
        test_manifest=str(manifest),
        n_manifest=5,
        task=task,
    )


def test_multilabel_document_validates_and_roundtrips(tmp_path):
    doc = _document(tmp_path, "multilabel")
    assert doc["task"] == "multilabel" and "confusion_matrix" not in doc["metrics"]
    assert doc["metrics"]["per_class"]["squamous"]["ap"] is None
    doc["cv"] = {"folds": 1, "seeds": [7], "runs": [run_summary(doc, 0, 7)]}
    path = tmp_path / "cnn.json"
    write_json(doc, path)
    assert load_metrics_document(path) == json.loads(json.dumps(doc))


def test_multiclass_document_still_validates_with_and_without_task(tmp_path):
    doc = _document(tmp_path, "multiclass")
    assert doc["task"] == "multiclass" and "confusion_matrix" in doc["metrics"]
    validate_metrics_document(doc)
    old = {k: v for k, v in doc.items() if k != "task"}  # written before multi-label
    validate_metrics_document(old)
    assert run_summary(old, 1, 2) == {"fold": 1, "seed": 2, "n_test": 5, "accuracy": 0.6,
                                      "balanced_accuracy": 0.75, "f1_macro": pytest.approx(7 / 12)}  # fmt: skip


def test_schema_checks_the_block_of_the_documents_task(tmp_path):
    multilabel = _document(tmp_path, "multilabel")
    multiclass = _document(tmp_path, "multiclass")
    # A multilabel block under task multiclass (or absent) is refused, and the reverse.
    with pytest.raises(UserError, match="metrics"):
        validate_metrics_document({**multilabel, "task": "multiclass"})
    with pytest.raises(UserError, match="metrics"):
        validate_metrics_document({k: v for k, v in multilabel.items() if k != "task"})
    with pytest.raises(UserError, match="metrics"):
        validate_metrics_document({**multiclass, "task": "multilabel"})
    with pytest.raises(UserError, match="key task"):
        validate_metrics_document({**multiclass, "task": "ranking"})
    bad = {**multilabel["metrics"], "hamming_loss": 1.5}
    with pytest.raises(UserError, match="metrics.hamming_loss"):
        validate_metrics_document({**multilabel, "metrics": bad})
    bad = {**multilabel["metrics"], "class_names": ["adeno", "benign"]}
    with pytest.raises(UserError, match="class_names/per_class"):
        validate_metrics_document({**multilabel, "metrics": bad})
    # A multiclass run summary in a multilabel document's cv.runs is refused.
    wrong_runs = {"folds": 1, "seeds": [7], "runs": [run_summary(multiclass, 0, 7)]}
    with pytest.raises(UserError, match="cv.runs.0"):
        validate_metrics_document({**multilabel, "cv": wrong_runs})


def test_run_summary_multilabel_keys(tmp_path):
    doc = _document(tmp_path, "multilabel")
    m = doc["metrics"]
    assert run_summary(doc, 2, 11) == {
        "fold": 2,
        "seed": 11,
        "n_test": 5,
        "map_macro": m["map_macro"],
        "auc_macro": m["auc_macro"],
        "f1_macro": m["f1_macro"],
        "top1_in_labels": pytest.approx(0.8),
    }
    assert m["map_macro"] == pytest.approx((2.6 / 3 + 1) / 2)


def _write_run(tmp_path: Path, rows: list[int], fold: int, task: str) -> tuple[str, str]:
    """One (fold, seed 7) run's predictions and metrics files over the given rows of the hand table."""
    table = multilabel_table().iloc[rows].reset_index(drop=True).assign(fold=np.int32(fold), seed=np.int32(7))
    if task == "multiclass":
        table["probabilities"] = [np.array([0.5, 0.25, 0.25], np.float32)] * len(table)
    predictions, metrics = tmp_path / f"pred{fold}.parquet", tmp_path / f"metrics{fold}.json"
    write_predictions(table, predictions)
    document = build_metrics_document(
        model=f"cnn_f{fold}", architecture="custom_cnn", weights="none", dataset_sha256="0" * 64,
        train_seconds=1.0, eval_seconds=0.5, device="cpu", task=task,
        metrics=compute_metrics(table, CLASSES, top_k=1, task=task),
    )  # fmt: skip
    write_json(document, metrics)
    return str(predictions), str(metrics)


def _pool(tmp_path: Path, run_task: str) -> dict:
    label_map = tmp_path / "label_map.json"
    write_json({"classes": CLASSES, "class_to_index": {c: i for i, c in enumerate(CLASSES)}, "task": "multilabel"},
               label_map)  # fmt: skip
    folds = tmp_path / "folds.parquet"
    pd.DataFrame({"image_id": multilabel_table()["image_id"], "fold": [0, 0, 1, 1, 1]}).to_parquet(folds)
    runs = [_write_run(tmp_path, [0, 1], 0, run_task), _write_run(tmp_path, [2, 3, 4], 1, run_task)]
    return pool_runs(
        [p for p, _ in runs], [m for _, m in runs], label_map_path=str(label_map), folds_path=str(folds),
        predictions_out=str(tmp_path / "pooled.parquet"), metrics_out=str(tmp_path / "pooled.json"),
        model="cnn", folds=2, seeds=[7], top_k=1,
    )  # fmt: skip


def test_pool_runs_multilabel_pools_metrics_and_run_summaries(tmp_path):
    document = _pool(tmp_path, "multilabel")
    assert document["task"] == "multilabel"
    # The pooled table is the hand table: the pooled metrics are its hand-checked values.
    assert document["metrics"] == multilabel_metrics(np.array(Y_TRUE), np.array(PROBS, np.float32), np.array(Y_PRED),
                                                     CLASSES)  # fmt: skip
    assert document["metrics"]["subset_accuracy"] == pytest.approx(3 / 5)
    assert [run["top1_in_labels"] for run in document["cv"]["runs"]] == [1.0, pytest.approx(2 / 3)]
    assert load_metrics_document(tmp_path / "pooled.json")["task"] == "multilabel"
    back = read_predictions(tmp_path / "pooled.parquet")
    assert [list(r) for r in back["true_multi_hot"]] == Y_TRUE


def test_pool_runs_refuses_runs_of_another_task(tmp_path):
    with pytest.raises(UserError, match="not a multilabel evaluation"):
        _pool(tmp_path, "multiclass")
