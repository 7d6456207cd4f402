"""Test-time augmentation (evaluation.tta: dihedral): the mean over the eight dihedral views, and the
{model}+tta rows of the comparison end to end on a finished run (no retraining)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.evaluation import evaluate  # noqa: E402
from support import accurate_predictions, make_compare_run  # noqa: E402
from workflow_runner import clone_run, planned_jobs, snakemake  # noqa: E402

CLASSES = ["a", "b", "c"]
SIZE = 5


def _images(n: int = 7) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _dataset(images: np.ndarray, batch_size: int = 3):
    labels = np.arange(len(images), dtype=np.int32) % 3
    ids = [f"img{i}" for i in range(len(images))]
    return tf.data.Dataset.from_tensor_slices((images, labels, ids)).batch(batch_size)


def _dense_model(softmax: bool) -> keras.Model:
    """Every pixel weighted differently: not invariant to any flip or rotation."""
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(3, activation="softmax" if softmax else None)
    outputs = dense(x)
    rng = np.random.default_rng(1)
    dense.set_weights([rng.normal(0, 1, (SIZE * SIZE * 3, 3)).astype(np.float32), np.zeros(3, np.float32)])
    return keras.Model(inputs, outputs, name="dense")


def _numpy_views(image: np.ndarray) -> list[np.ndarray]:
    """The eight dihedral views, made independently of quiltflow: four rotations, each mirrored."""
    rotations = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("softmax", [True, False])
def test_dihedral_tta_is_the_mean_over_the_eight_views(softmax):
    model, images = _dense_model(softmax), _images()
    table = evaluate.predict(model, _dataset(images), CLASSES, tta="dihedral")
    expected = []
    for image in images:
        outputs = np.asarray(model.predict_on_batch(np.stack(_numpy_views(image))), np.float64)
        expected.append((outputs if softmax else _softmax(outputs)).mean(axis=0))  # softmax per view, then mean
    probs = np.stack(table["probabilities"].to_numpy())
    np.testing.assert_allclose(probs, np.stack(expected), atol=1e-6)
    assert table["pred_label"].tolist() == np.stack(expected).argmax(axis=1).tolist()
    plain = np.stack(evaluate.predict(model, _dataset(images), CLASSES)["probabilities"].to_numpy())
    assert not np.allclose(plain, probs, atol=1e-4), "the toy model should not be rotation invariant"


def test_dihedral_views_are_distinct_and_identity_first():
    images = _images(2)
    views = evaluate.dihedral_views(tf.constant(images)).numpy().reshape(2, 8, SIZE, SIZE, 3)
    np.testing.assert_array_equal(views[:, 0], images)
    for i, image in enumerate(images):
        assert sorted(v.tobytes() for v in views[i]) == sorted(v.tobytes() for v in _numpy_views(image))


def test_rotation_invariant_model_gives_the_plain_probabilities():
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    images = _images()
    plain = evaluate.predict(model, _dataset(images), CLASSES)
    tta = evaluate.predict(model, _dataset(images), CLASSES, tta="dihedral")
    np.testing.assert_allclose(np.stack(tta["probabilities"]), np.stack(plain["probabilities"]), atol=1e-6)
    assert tta["pred_label"].tolist() == plain["pred_label"].tolist()
    assert tta["image_id"].tolist() == plain["image_id"].tolist()


def test_grid_cells_are_averaged_after_the_views():
    model, images = _dense_model(True), _images(6)  # 3 source images of 2 cells each
    labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
    ids = ["s0", "s0", "s1", "s1", "s2", "s2"]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels, ids)).batch(4)
    table = evaluate.predict(model, dataset, CLASSES, records_per_image=2, tta="dihedral")
    per_cell = [np.asarray(model.predict_on_batch(np.stack(_numpy_views(im)))).mean(axis=0) for im in images]
    expected = np.stack(per_cell).reshape(3, 2, 3).mean(axis=1)
    np.testing.assert_allclose(np.stack(table["probabilities"]), expected, atol=1e-6)


def test_unknown_tta_mode_is_one_line():
    with pytest.raises(UserError, match="evaluation.tta"):
        evaluate.predict(_dense_model(True), _dataset(_images()), CLASSES, tta="d4")


# --- end to end on a clone of the finished run -----------------------------------------------------


def _digests(paths: list[Path]) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


def test_tta_adds_its_rows_without_retraining(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    models = sorted(yaml.safe_load((workdir / "config/test.yaml").read_text())["models"])
    plain = sorted((workdir / "results/predictions").glob("*.parquet"))
    plain += sorted((workdir / "results/metrics").glob("*.json"))
    before = _digests(plain)
    (workdir / "none.yaml").write_text(yaml.safe_dump({"evaluation": {"tta": "none"}}))
    assert planned_jobs(workdir, configfiles=("config/test.yaml", "none.yaml")) == set()  # the default

    (workdir / "tta.yaml").write_text(yaml.safe_dump({"evaluation": {"tta": "dihedral"}}))
    configs = ("config/test.yaml", "tta.yaml")
    expected = {f"evaluate_tta[model={m}, run=]" for m in models} | {"compare_models", "all"}
    assert planned_jobs(workdir, configfiles=configs) == expected
    snakemake(workdir, configfiles=configs)

    assert _digests(plain) == before, "the plain evaluation was rewritten"
    for model in models:
        metrics = json.loads((workdir / f"results/metrics/{model}.tta.json").read_text())
        assert (metrics["model"], metrics["tta"]) == (f"{model}+tta", "dihedral")
    comparison = json.loads((workdir / "results/comparison.json").read_text())
    rows = {r["name"]: r for r in comparison["rows"]}
    for model in models:
        row = rows[f"{model}+tta"]
        assert row["kind"] == "tta" and row["tta"] == "dihedral"
        assert row["accuracy_ci"] is not None and row["video_accuracy_ci"] is not None
    assert rows["ensemble"]["members"] == ", ".join(models)  # plain models only
    assert {"majority_baseline", "stratified_baseline"} <= set(rows)
    tta_tests = {(t["a"], t["b"]) for t in comparison["pairwise"] if t["a"].endswith("+tta")}
    assert tta_tests == {(f"{m}+tta", m) for m in models}
    assert all(t["p_value_holm"] is not None for t in comparison["pairwise"])
    assert not any(t["a"].endswith("+tta") for t in comparison["vs_majority"])
    markdown = (workdir / "results/comparison.md").read_text()
    for model in models:
        assert f"| {model}+tta | tta |" in markdown
        assert f"{model}+tta" in markdown.split("## Models against each other")[1]
    assert planned_jobs(workdir, configfiles=configs) == set()


# --- the comparison's TTA rows (no TensorFlow needed) -----------------------------------------------


def _tta_run(tmp_path: Path, tta_key: bool = True) -> dict:
    models = {"good": accurate_predictions(0.85, 1), "weak": accurate_predictions(0.55, 2)}
    models |= {"good+tta": accurate_predictions(0.9, 3), "weak+tta": accurate_predictions(0.6, 4)}
    paths = make_compare_run(tmp_path, models)
    for path in paths["metrics"][2:]:
        doc = json.loads(Path(path).read_text())
        Path(path).write_text(json.dumps({**doc, "tta": "dihedral"} if tta_key else doc))
    return paths


def _compare_with_tta(paths: dict) -> dict:
    from quiltflow.compare.run import compare_models

    return compare_models(
        paths["metrics"][:2], paths["predictions"][:2], paths["histories"][:2], paths["split_report"],
        paths["label_map"], seed=0, bootstrap_samples=100, permutations=200, alpha=0.05,
        tta_metrics_paths=paths["metrics"][2:], tta_predictions_paths=paths["predictions"][2:],
    )  # fmt: skip


def test_comparison_tta_rows_are_tested_against_their_own_model(tmp_path):
    document = _compare_with_tta(_tta_run(tmp_path))
    kinds = {r["name"]: r["kind"] for r in document["rows"]}
    assert kinds == {"good": "model", "weak": "model", "good+tta": "tta", "weak+tta": "tta", "ensemble": "ensemble",
                     "majority_baseline": "baseline", "stratified_baseline": "baseline"}  # fmt: skip
    assert next(r for r in document["rows"] if r["name"] == "ensemble")["members"] == "good, weak"
    pairs = {(t["a"], t["b"]) for t in document["pairwise"]}
    assert pairs == {("good", "weak"), ("good", "ensemble"), ("weak", "ensemble"), ("good+tta", "good"),
                     ("weak+tta", "weak")}  # fmt: skip
    assert {t["a"] for t in document["vs_majority"]} == {"good", "weak", "ensemble"}


def test_comparison_refuses_a_tta_file_of_another_model(tmp_path):
    paths = _tta_run(tmp_path, tta_key=False)
    with pytest.raises(UserError, match="is not the test-time augmentation of 'good'"):
        _compare_with_tta(paths)
