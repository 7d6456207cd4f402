"""Prediction on new images with multi-label models (issue 16): tiny in-memory sigmoid models whose
outputs are known (a zero kernel: each label's probability is the sigmoid of its bias), the labels
over threshold, the averaging of runs and of their thresholds, and no softmax on the way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from quiltflow.core.errors import UserError
from quiltflow.core.settings import ShardSettings
from quiltflow.core.tasks import MULTICLASS, MULTILABEL
from quiltflow.evaluation.predict import (
    LABELS_SEPARATOR,
    label_columns,
    predict_images,
    predict_paths,
    run_thresholds,
)

CLASSES = ["Breast", "Lung", "Soft tissue"]
SIZE = 32
SETTINGS = ShardSettings.from_config({"jpeg_quality": 95, "framing": "center_crop"}, image_size=SIZE)


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1 - p))


# --- the columns (no TensorFlow) ---------------------------------------------------------------------


def test_labels_over_threshold_are_joined_and_counted():
    probs = np.array(
        [
            [0.9, 0.2, 0.6],  # Breast and Soft tissue over threshold
            [0.4, 0.3, 0.1],  # none: the top label is still given
            [np.nan, np.nan, np.nan],  # a bad image
            [0.5, 0.7, 0.59],  # exactly at Breast's threshold: included (>=)
        ]
    )
    columns = label_columns(probs, CLASSES, MULTILABEL, np.array([0.5, 0.75, 0.6]))
    table = pd.DataFrame(columns)
    assert list(table.columns) == [
        "pred_label",
        "pred_index",
        "pred_prob",
        "pred_labels",
        "n_pred_labels",
        *[f"prob_{c}" for c in CLASSES],
    ]
    assert table["pred_labels"].iloc[0] == f"Breast{LABELS_SEPARATOR}Soft tissue"
    assert table["pred_labels"].iloc[1] == ""
    assert pd.isna(table["pred_labels"].iloc[2]) and pd.isna(table["n_pred_labels"].iloc[2])
    assert table["pred_labels"].iloc[3] == "Breast"
    assert table["n_pred_labels"].tolist()[:2] == [2, 0] and table["n_pred_labels"].iloc[3] == 1
    assert table["pred_label"].tolist()[:2] == ["Breast", "Breast"] and table["pred_label"].iloc[3] == "Lung"
    assert table["pred_index"].iloc[3] == 1
    np.testing.assert_allclose(table["pred_prob"].iloc[[0, 1, 3]], [0.9, 0.4, 0.7], rtol=1e-6)
    np.testing.assert_allclose(table["prob_Lung"].iloc[[0, 1, 3]], [0.2, 0.3, 0.7], rtol=1e-6)


def test_single_label_columns_are_unchanged():
    probs = np.array([[0.1, 0.7, 0.2], [np.nan] * 3])
    table = pd.DataFrame(label_columns(probs, CLASSES, MULTICLASS))
    assert list(table.columns) == ["pred_label", "pred_index", "pred_prob", *[f"prob_{c}" for c in CLASSES]]
    assert table["pred_label"].iloc[0] == "Lung" and pd.isna(table["pred_label"].iloc[1])


def test_multilabel_needs_thresholds_of_every_class():
    with pytest.raises(UserError, match="thresholds"):
        label_columns(np.full((1, 3), 0.5), CLASSES, MULTILABEL, None)
    with pytest.raises(UserError, match="Soft tissue"):
        label_columns(np.full((1, 3), 0.5), CLASSES, MULTILABEL, {"Breast": 0.5, "Lung": 0.5})


def write_train_info(folder: Path, thresholds: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = {"task": MULTILABEL} | ({} if thresholds is None else {"thresholds": thresholds})
    path = folder / "train_info.json"
    path.write_text(json.dumps(info))
    return path


def test_runs_thresholds_are_averaged(tmp_path):
    a = write_train_info(tmp_path / "a", {"Breast": 0.2, "Lung": 0.5, "Soft tissue": 0.9})
    b = write_train_info(tmp_path / "b", {"Soft tissue": 0.3, "Lung": 0.7, "Breast": 0.4})
    np.testing.assert_allclose(run_thresholds([a], CLASSES), [0.2, 0.5, 0.9])
    np.testing.assert_allclose(run_thresholds([a, b], CLASSES), [0.3, 0.6, 0.6])
    with pytest.raises(UserError, match="no thresholds"):
        run_thresholds([write_train_info(tmp_path / "c", None)], CLASSES)
    with pytest.raises(UserError, match="'Lung'"):
        run_thresholds([write_train_info(tmp_path / "d", {"Breast": 0.5, "Soft tissue": 0.5})], CLASSES)
    with pytest.raises(UserError, match="does not exist"):
        run_thresholds([tmp_path / "e" / "train_info.json"], CLASSES)


# --- tiny sigmoid models ---------------------------------------------------------------------------------


def constant_model(probabilities, activation: str = "sigmoid", name: str = "tiny"):
    """image -> pool -> Dense 'probs' with a zero kernel: the outputs are activation(bias) for any
    image, so sigmoid outputs are ``probabilities`` exactly (float32)."""
    keras = pytest.importorskip("keras")
    layers = keras.layers
    image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = layers.GlobalAveragePooling2D()(layers.Rescaling(1 / 255)(image))
    bias = logit(probabilities) if activation == "sigmoid" else np.asarray(probabilities, np.float64)
    dense = layers.Dense(
        len(CLASSES),
        activation=activation,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(bias.astype(np.float32)),
        name="probs",
    )
    return keras.Model(image, dense(x), name=name)


def save_run(folder: Path, probabilities, thresholds: dict | None = None, activation: str = "sigmoid") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    constant_model(probabilities, activation).save(path)
    if thresholds is not None:
        write_train_info(folder, thresholds)
    return path


def images(folder: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 20, 3)).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_one_sigmoid_run_gives_its_raw_probabilities_and_thresholded_labels(tmp_path):
    # Sum 1.5: a softmax (or any renormalisation) would change every value.
    model = save_run(tmp_path / "run", [0.8, 0.3, 0.4], {"Breast": 0.5, "Lung": 0.5, "Soft tissue": 0.35})
    paths = [*images(tmp_path / "img"), str(tmp_path / "img" / "missing.png")]
    table = predict_paths(model, paths, settings=SETTINGS, class_names=CLASSES, task=MULTILABEL)
    ok = table["status"] == "ok"
    assert ok.tolist() == [True, True, True, False]
    probs = table.loc[ok, [f"prob_{c}" for c in CLASSES]].to_numpy(np.float64)
    np.testing.assert_allclose(probs, np.tile([0.8, 0.3, 0.4], (3, 1)), atol=1e-6)
    assert (table.loc[ok, "pred_labels"] == "Breast|Soft tissue").all()
    assert (table.loc[ok, "n_pred_labels"] == 2).all()
    assert (table.loc[ok, "pred_label"] == "Breast").all()
    np.testing.assert_allclose(table.loc[ok, "pred_prob"], 0.8, atol=1e-6)
    assert pd.isna(table["pred_labels"].iloc[3]) and table["status"].iloc[3] == "missing"


def test_runs_probabilities_and_thresholds_are_averaged(tmp_path):
    # Lung: 0.3 and 0.5 -> 0.4; its thresholds 0.2 and 0.7 -> 0.45: not over (run a alone, with
    # its own threshold, says Lung). Breast: 0.9 and 0.7 -> 0.8 over (0.5 + 0.9) / 2.
    a = save_run(tmp_path / "a", [0.9, 0.3, 0.1], {"Breast": 0.5, "Lung": 0.2, "Soft tissue": 0.5})
    b = save_run(tmp_path / "b", [0.7, 0.5, 0.2], {"Breast": 0.9, "Lung": 0.7, "Soft tissue": 0.1})
    paths = images(tmp_path / "img", 2)
    table = predict_paths([a, b], paths, settings=SETTINGS, class_names=CLASSES, task=MULTILABEL)
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy(np.float64)
    np.testing.assert_allclose(probs, np.tile([0.8, 0.4, 0.15], (2, 1)), atol=1e-6)
    # Soft tissue: 0.15 over the mean threshold 0.3? No. Breast: 0.8 >= 0.7: yes.
    assert table["pred_labels"].tolist() == ["Breast", "Breast"]
    alone = predict_paths(a, paths, settings=SETTINGS, class_names=CLASSES, task=MULTILABEL)
    assert alone["pred_labels"].tolist() == ["Breast|Lung"] * 2
    given = predict_paths(
        [a, b], paths, settings=SETTINGS, class_names=CLASSES, task=MULTILABEL, thresholds=[0.9, 0.1, 0.1]
    )
    assert given["pred_labels"].tolist() == ["Lung|Soft tissue"] * 2


def test_rule_reads_the_task_from_the_label_map(tmp_path):
    model = save_run(tmp_path / "run", [0.2, 0.6, 0.7], {"Breast": 0.5, "Lung": 0.5, "Soft tissue": 0.8})
    label_map = tmp_path / "label_map.json"
    label_map.write_text(
        json.dumps({"classes": CLASSES, "class_to_index": {c: i for i, c in enumerate(CLASSES)}, "task": MULTILABEL})
    )
    images(tmp_path / "img", 2)
    out = tmp_path / "out"
    table = predict_images(
        model_paths=[model],
        images=tmp_path / "img",
        label_map_path=label_map,
        settings=SETTINGS,
        parquet_path=out / "m.parquet",
        csv_path=out / "m.csv",
    )
    assert table["pred_labels"].tolist() == ["Lung", "Lung"] and table["pred_label"].tolist() == ["Soft tissue"] * 2
    written = pd.read_parquet(out / "m.parquet")
    assert written["pred_labels"].tolist() == ["Lung", "Lung"]
    assert written["n_pred_labels"].tolist() == [1, 1]
    assert "pred_labels" in pd.read_csv(out / "m.csv").columns
    # The same rule with a single-label map: the sigmoid head is refused, not silently softmaxed.
    label_map.write_text(json.dumps({"classes": CLASSES, "class_to_index": {c: i for i, c in enumerate(CLASSES)}}))
    with pytest.raises(UserError, match="sigmoid"):
        predict_images(
            model_paths=[model],
            images=tmp_path / "img",
            label_map_path=label_map,
            settings=SETTINGS,
            parquet_path=out / "n.parquet",
            csv_path=out / "n.csv",
        )


def test_heads_that_do_not_fit_the_task_are_one_line_errors(tmp_path):
    softmax = save_run(tmp_path / "softmax", [0.0, 1.0, 2.0], {c: 0.5 for c in CLASSES}, activation="softmax")
    with pytest.raises(UserError, match="softmax") as err:
        predict_paths(softmax, [], settings=SETTINGS, class_names=CLASSES, task=MULTILABEL)
    assert "\n" not in str(err.value)
    # A linear head passes the layer check; its outputs outside [0, 1] do not.
    linear = save_run(tmp_path / "linear", [0.5, 1.5, -0.2], {c: 0.5 for c in CLASSES}, activation="linear")
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        predict_paths(linear, images(tmp_path / "img", 1), settings=SETTINGS, class_names=CLASSES, task=MULTILABEL)
    # A multi-label run without thresholds.
    bare = save_run(tmp_path / "bare", [0.5, 0.5, 0.5])
    with pytest.raises(UserError, match="train_info.json does not exist"):
        predict_paths(bare, [], settings=SETTINGS, class_names=CLASSES, task=MULTILABEL)
