"""Rule explain_model and quiltflow.evaluation.explain: Grad-CAM on tiny in-memory models, the seeded choice of
test images, and `snakemake explain` on a copy of the finished test run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map
from quiltflow.evaluation.explain import (
    MISTAKES_FILE,
    class_gradients,
    file_stem,
    gallery_files,
    gradcam,
    heat_maps,
    select_examples,
    split_at,
    top_mistakes,
)
from workflow_runner import clone_run, planned_jobs, rules_of, run_without_tensorflow, snakemake

keras = pytest.importorskip("keras")
layers = keras.layers

SIZE = 16


# --- tiny models -------------------------------------------------------------------------------------


def _const(value: float):
    return keras.initializers.Constant(value)


def _masked_conv(x, half: str, name: str = "target"):
    """Zero one half of the image (the class can only depend on the other), then the target conv."""
    keep = SIZE // 2
    crop = ((0, 0), (0, keep)) if half == "left" else ((0, keep), (0, 0))
    x = layers.ZeroPadding2D(crop)(layers.Cropping2D(crop)(x))
    return layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=_const(0.05), name=name)(x)


def _head(x):
    x = layers.GlobalAveragePooling2D()(x)
    # Class 1's score grows with every channel, class 0's falls: bright images are class 1.
    kernel = keras.initializers.Constant(np.array([[-1.0, 1.0]] * 4, np.float32))
    return layers.Dense(2, activation="softmax", kernel_initializer=kernel, name="probs")(x)


def half_model(half: str):
    """Flat: image -> rescale -> keep one half -> conv 'target' -> pool -> softmax."""
    image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255)(image)
    return keras.Model(image, _head(_masked_conv(x, half)), name="flat")


def nested_half_model(half: str):
    """The same network as ``half_model`` shaped like the ResNet models: image -> backbone (a
    nested model holding a nested 'net') -> head (a nested model)."""
    inner_in = keras.Input((SIZE, SIZE, 3), name="net_input")
    net = keras.Model(inner_in, _masked_conv(inner_in, half), name="net")
    image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    backbone = keras.Model(image, net(layers.Rescaling(1 / 255)(image)), name="backbone")
    features = keras.Input((SIZE, SIZE, 4), name="features")
    head = keras.Model(features, _head(features), name="head")
    top_in = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    return keras.Model(top_in, head(backbone(top_in)), name="nested")


def random_images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)


# --- Grad-CAM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", ["left", "top"])
def test_heat_map_lies_on_the_half_the_class_depends_on(half):
    model = half_model(half)
    maps, probs = gradcam(model, random_images(), ("target",))
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert (probs.argmax(axis=1) == 1).all()
    kept = maps[:, :, : SIZE // 2] if half == "left" else maps[:, : SIZE // 2, :]
    assert (kept.sum(axis=(1, 2)) / maps.sum(axis=(1, 2)) > 0.9).all()


def test_nested_models_give_the_flat_models_maps():
    images = random_images(4, seed=1)
    flat_maps, flat_probs = gradcam(half_model("left"), images, ("target",))
    nested = nested_half_model("left")
    maps, probs = gradcam(nested, images, ("backbone", "net", "target"))
    np.testing.assert_allclose(maps, flat_maps, atol=1e-5)
    np.testing.assert_allclose(probs, flat_probs, atol=1e-6)
    np.testing.assert_allclose(probs, np.asarray(nested(images)), atol=1e-6)


def _random_model(activation: str):
    """A small random network with layers after the target, so the gradient is not trivial."""
    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255)(image)
    x = layers.Conv2D(3, 3, padding="same", activation="relu", name="target")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="tanh")(x)
    x = layers.Dense(3, activation=activation, name="probs")(layers.Flatten()(x))
    return keras.Model(image, x)


def _logit_gradients_match_finite_differences(activation: str, classes: list[int], seed: int):
    """class_gradients of a model ending in ``activation`` against central differences of the
    logits (the same weights without the activation); returns (model, its logits twin, images,
    activations, numeric gradients)."""
    model, logits_model = _random_model(activation), _random_model(None)
    logits_model.set_weights(model.get_weights())
    images = np.random.default_rng(seed).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    acts, grads, probs = class_gradients(model, images, ("target",), classes)
    _, back = split_at(logits_model, ("target",))
    base, eps, numeric = np.asarray(acts, np.float64), 1e-2, np.zeros(acts.shape)
    for index in np.ndindex(*acts.shape[1:]):
        for sign in (1, -1):
            shifted = base.copy()
            shifted[(slice(None), *index)] += sign * eps
            logits = np.asarray(back(shifted.astype(np.float32)), np.float64)
            numeric[(slice(None), *index)] += sign * logits[[0, 1], classes] / (2 * eps)
    np.testing.assert_allclose(np.asarray(grads), numeric, atol=2e-3)
    np.testing.assert_allclose(probs, np.asarray(model(images)), atol=1e-6)
    return model, logits_model, images, acts, numeric


def test_gradients_match_finite_differences_of_the_logit():
    model, _, images, acts, numeric = _logit_gradients_match_finite_differences("softmax", [0, 2], 5)
    # The model's softmax is back after the logits were read.
    assert np.allclose(np.asarray(model(images)).sum(axis=1), 1.0)
    maps, _ = gradcam(model, images, ("target",), [0, 2])
    np.testing.assert_allclose(maps, heat_maps(acts, numeric.astype(np.float32), 8), atol=1e-3)


def test_all_negative_evidence_gives_an_all_zero_map():
    acts = np.ones((1, 2, 2, 3), np.float32)
    maps = heat_maps(acts, -np.ones_like(acts), 8)
    assert maps.shape == (1, 8, 8) and not maps.any()


def test_registered_architectures_have_a_target(tmp_path):
    """custom_cnn: its last Conv2D; the ResNet models: conv5_block3_out inside the nested ResNet."""
    from quiltflow.evaluation.explain import target_path
    from quiltflow.models.builders import build_model

    custom = build_model("custom_cnn", 3, 32, weights="none")
    path = target_path(custom, "custom_cnn")
    assert path == ([layer.name for layer in custom.layers if isinstance(layer, layers.Conv2D)][-1],)
    resnet = build_model("resnet50_frozen", 3, 64, weights="none")
    resnet.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    path = target_path(loaded, "resnet50_frozen")
    assert path == ("backbone", "resnet50", "conv5_block3_out")
    images = random_images(2).repeat(4, axis=1).repeat(4, axis=2)  # 64 px
    front, back = split_at(loaded, path)
    assert tuple(front(images).shape) == (2, 2, 2, 2048)
    np.testing.assert_allclose(np.asarray(back(front(images))), np.asarray(loaded(images)), atol=1e-5)
    for model, size in ((custom, 32), (loaded, 64)):
        maps, _ = gradcam(model, images[:, :size, :size], target_path(model, model.name))
        assert maps.shape == (2, size, size) and 0.0 <= maps.min() and maps.max() <= 1.0


# --- file names and the choice of images ------------------------------------------------------------------


def test_gallery_files_are_safe_and_in_label_map_order():
    assert file_stem("Soft tissue") == "Soft_tissue"
    assert file_stem("Head & Neck / ENT") == "Head_Neck_ENT"
    assert gallery_files(["Soft tissue", "Breast", "???"]) == [
        "Soft_tissue.png",
        "Breast.png",
        "class2.png",
        MISTAKES_FILE,
    ]
    with pytest.raises(UserError, match="Soft_tissue.png"):
        gallery_files(["Soft tissue", "Soft_tissue"])
    with pytest.raises(UserError, match="mistakes"):
        gallery_files(["Mistakes", "Breast"])


def test_naming_selection_and_galleries_need_no_tensorflow():
    run_without_tensorflow(
        "from quiltflow.evaluation.explain import gallery_files, select_examples, top_mistakes\nimport quiltflow.evaluation.gallery"
    )


def fake_predictions(n: int = 60, classes: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=n).astype(np.float32)
    return pd.DataFrame(
        {
            "image_id": [f"img{i:03d}.jpg" for i in range(n)],
            "group": ["v"] * n,
            "true_label": rng.integers(0, classes, n).astype(np.int32),
            "pred_label": probs.argmax(axis=1).astype(np.int32),
            "probabilities": list(probs),
        }
    )


def test_selection_is_seeded_and_independent_of_row_order():
    predictions = fake_predictions()
    first = select_examples(predictions, 3, 4, seed=7)
    shuffled = predictions.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(first, select_examples(shuffled, 3, 4, seed=7))
    assert not first["image_id"].equals(select_examples(predictions, 3, 4, seed=8)["image_id"])


def test_selection_has_correct_and_wrong_images_of_every_class():
    predictions = fake_predictions()
    chosen = select_examples(predictions, 3, 4, seed=7)
    right = chosen["true_label"] == chosen["pred_label"]
    assert (right == (chosen["kind"] == "correct")).all()
    truth = predictions["true_label"].to_numpy()
    wrong = predictions["pred_label"].to_numpy() != truth
    for cls in range(3):
        for kind, pool in (("correct", ~wrong), ("wrong", wrong)):
            n = int(((truth == cls) & pool).sum())
            assert ((chosen["true_label"] == cls) & (chosen["kind"] == kind)).sum() == min(4, n)
    assert chosen["image_id"].is_unique


def test_most_confident_mistakes_come_first():
    predictions = fake_predictions()
    worst = top_mistakes(predictions, 5)
    assert len(worst) == 5 and (worst["true_label"] != worst["pred_label"]).all()
    assert worst["prob"].is_monotonic_decreasing
    all_wrong = top_mistakes(predictions, 1000)
    assert worst["prob"].iloc[0] == all_wrong["prob"].max()
    perfect = predictions.assign(true_label=predictions["pred_label"])
    assert top_mistakes(perfect, 5).empty
    assert (select_examples(perfect, 3, 4, seed=1)["kind"] == "correct").all()


# --- multi-label models (issue 16) -----------------------------------------------------------------------


def _sigmoid_head(x, classes: int = 3):
    x = layers.GlobalAveragePooling2D()(x)
    kernel = keras.initializers.Constant(np.array([[-1.0, 1.0, 0.5][:classes]] * 4, np.float32))
    return layers.Dense(classes, activation="sigmoid", kernel_initializer=kernel, name="probs")(x)


def sigmoid_half_model(half: str, classes: int = 3):
    """``half_model`` with a sigmoid head (one unit per label) in place of the softmax."""
    image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255)(image)
    return keras.Model(image, _sigmoid_head(_masked_conv(x, half), classes), name="flat_sigmoid")


@pytest.mark.parametrize("half", ["left", "top"])
def test_sigmoid_head_is_explained_on_the_half_its_label_depends_on(half):
    model = sigmoid_half_model(half)
    images = random_images()
    maps, probs = gradcam(model, images, ("target",))
    np.testing.assert_allclose(probs, np.asarray(model(images)), atol=1e-6)  # sigmoids, not a softmax
    assert not np.allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == 1).all() and np.allclose(maps.max(axis=(1, 2)), 1.0)
    kept = maps[:, :, : SIZE // 2] if half == "left" else maps[:, : SIZE // 2, :]
    assert (kept.sum(axis=(1, 2)) / maps.sum(axis=(1, 2)) > 0.9).all()


def test_sigmoid_gradients_are_of_the_labels_logit():
    """Grad-CAM of a sigmoid head differentiates the label's logit (not its probability)."""
    model, logits_model, images, _, _ = _logit_gradients_match_finite_differences("sigmoid", [1, 2], 6)
    # The sigmoid is back after the logits were read.
    outputs = np.asarray(model(images))
    assert outputs.min() >= 0.0 and outputs.max() <= 1.0
    np.testing.assert_allclose(outputs, 1 / (1 + np.exp(-np.asarray(logits_model(images)))), atol=1e-6)


# Hand-made multi-label predictions, 3 labels. true_label is the primary label (the stratum).
#   id  true labels  primary  top label  ->  class examples              mistake
ML_ROWS = [
    ("a", [0, 1], 0, 0),  # correct for 0                                  -
    ("b", [0, 1], 0, 1),  # correct for 1 (not wrong for 0: 1 is true)     -
    ("c", [1], 1, 2),  # wrong for 1                                       yes
    ("d", [0, 2], 2, 1),  # wrong for 0 and for 2                          yes
    ("e", [2], 2, 2),  # correct for 2                                     -
    ("f", [0], 0, 0),  # correct for 0                                     -
    ("g", [], 1, 0),  # no true label at all: no class's example           yes
]
ML_TOP_PROB = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.95, "e": 0.6, "f": 0.5, "g": 0.3}


def multilabel_predictions() -> pd.DataFrame:
    probs, hot = [], []
    for image_id, labels, _, top in ML_ROWS:
        p = np.full(3, 0.1, np.float32)
        p[top] = ML_TOP_PROB[image_id]
        probs.append(p)
        hot.append(np.isin(np.arange(3), labels).astype(np.int8))
    return pd.DataFrame(
        {
            "image_id": [r[0] for r in ML_ROWS],
            "group": ["v"] * len(ML_ROWS),
            "true_label": np.array([r[2] for r in ML_ROWS], np.int32),
            "pred_label": np.array([r[3] for r in ML_ROWS], np.int32),
            "probabilities": probs,
            "true_multi_hot": hot,
            "pred_multi_hot": hot,
        }
    )


def test_multilabel_examples_follow_the_true_label_sets():
    predictions = multilabel_predictions()
    chosen = select_examples(predictions, 3, 10, seed=3)
    got = {(int(c), k): sorted(g["image_id"]) for (c, k), g in chosen.groupby(["gallery_class", "kind"])}
    assert got == {
        (0, "correct"): ["a", "f"],
        (0, "wrong"): ["d"],
        (1, "correct"): ["b"],
        (1, "wrong"): ["c"],
        (2, "correct"): ["e"],
        (2, "wrong"): ["d"],
    }
    assert chosen.loc[chosen["image_id"] == "b", "true_labels"].iloc[0] == [0, 1]
    worst = top_mistakes(predictions, 10)
    assert worst["image_id"].tolist() == ["d", "c", "g"]  # by top-label probability
    assert top_mistakes(predictions, 1)["image_id"].tolist() == ["d"]
    # The single-label rule on the primary label would differ (b: primary 0, top 1 = wrong).
    single = select_examples(predictions.drop(columns=["true_multi_hot"]), 3, 10, seed=3)
    assert "gallery_class" not in single.columns
    assert set(single.loc[single["kind"] == "wrong", "image_id"]) == {"b", "c", "d", "g"}
    # Seeded, order-independent, and drawn per class with per_class.
    shuffled = predictions.sample(frac=1.0, random_state=2)
    pd.testing.assert_frame_equal(chosen, select_examples(shuffled, 3, 10, seed=3))
    assert len(select_examples(predictions, 3, 1, seed=3)) == 6


def test_the_task_and_the_predictions_must_agree():
    predictions = multilabel_predictions()
    with pytest.raises(UserError, match="true_multi_hot"):
        select_examples(predictions.drop(columns=["true_multi_hot"]), 3, 2, seed=1, task="multilabel")
    with pytest.raises(UserError, match="true_multi_hot"):
        top_mistakes(predictions, 2, task="multiclass")


def test_multilabel_caption_names_every_true_label():
    from quiltflow.evaluation.gallery import caption

    names = ["Breast", "Lung", "Skin", "Bone", "Liver"]
    row = pd.Series({"image_id": "x.jpg", "true_label": 0, "pred_label": 1, "prob": 0.5, "true_labels": [0, 1]})
    assert caption(row, names).splitlines()[1:] == ["true: Breast, Lung", "pred: Lung (0.50)"]
    many = row.copy()
    many["true_labels"] = [0, 1, 2, 3, 4]
    assert caption(many, names).splitlines()[1] == "true: Breast, Lung, Skin +2"
    assert caption(row.drop("true_labels"), names).splitlines()[1] == "true: Breast"


def test_explain_model_on_a_sigmoid_model_writes_its_galleries(tmp_path, monkeypatch):
    """explain_model end to end on a tiny sigmoid model, the test shards replaced by in-memory images."""
    import quiltflow.evaluation.explain as explain

    model = sigmoid_half_model("left", classes=3)
    ids = [r[0] for r in ML_ROWS]
    pixels = dict(zip(ids, random_images(len(ids), seed=4)))
    predictions = multilabel_predictions()
    probs = np.asarray(model(np.stack([pixels[i] for i in ids])))
    predictions["probabilities"] = list(probs.astype(np.float32))
    predictions["pred_label"] = probs.argmax(axis=1).astype(np.int32)
    predictions.to_parquet(tmp_path / "predictions.parquet")
    names = ["Breast", "Lung", "Skin"]
    label_map = {"classes": names, "class_to_index": {c: i for i, c in enumerate(names)}, "task": "multilabel"}
    (tmp_path / "label_map.json").write_text(json.dumps(label_map))
    monkeypatch.setattr(explain, "read_test_images", lambda paths, wanted, batch: {i: pixels[i] for i in wanted})
    monkeypatch.setattr(explain, "_load", lambda path: model)
    monkeypatch.setattr(explain, "target_path", lambda model, name: ("target",))
    index = explain.explain_model(
        model_path="unused",
        predictions_path=str(tmp_path / "predictions.parquet"),
        test_index_paths=[],
        label_map_path=str(tmp_path / "label_map.json"),
        out_dir=str(tmp_path / "out"),
        model_name="tiny",
        architecture_name="custom_cnn",
        images_per_class=2,
        mistakes=3,
        seed=1,
    )
    for name in [*gallery_files(names), "index.json"]:
        assert (tmp_path / "out" / name).is_file(), name
    assert index["task"] == "multilabel" and index["max_probability_difference"] < 1e-5
    top = dict(zip(ids, predictions["pred_label"]))
    truth = {r[0]: r[1] for r in ML_ROWS}
    for entry in index["explained"]:
        assert entry["true_labels"] == truth[entry["image_id"]]
        right = top[entry["image_id"]] in entry["true_labels"]
        if entry["kind"] == "mistake":
            assert not right and "gallery_class" not in entry
        else:
            assert entry["gallery_class"] in entry["true_labels"]
            assert right == (entry["kind"] == "correct")
            assert entry["kind"] == "wrong" or entry["pred_label"] == entry["gallery_class"]
    assert {e["kind"] for e in index["explained"]} >= {"mistake"}


# --- the rule -----------------------------------------------------------------------------------------------


def _valid_png(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.mark.e2e
def test_snakemake_explain_plans_one_job_per_model(finished_run):
    planned = planned_jobs(finished_run, "explain")
    assert rules_of(planned) == {"explain_model", "explain"}
    assert len(planned) == 4  # one job per model of config/test.yaml, and the target


@pytest.mark.e2e
def test_snakemake_explain_writes_every_gallery_and_reruns_nothing_else(explained_run, tmp_path):
    """The shared explained_run: finished_run after `snakemake explain`."""
    workdir = explained_run
    class_names = read_label_map(workdir / "results/splits/label_map.json")
    for model in ("custom_cnn", "resnet50_frozen", "resnet50_finetune"):
        folder = workdir / "results/explain" / model
        files = gallery_files(class_names)
        # (.snakemake_timestamp: Snakemake's marker in every directory() output)
        listed = sorted(p.name for p in folder.iterdir() if p.name != ".snakemake_timestamp")
        assert listed == sorted([*files, "index.json"])
        for name in files:
            width, height = _valid_png(folder / name)
            assert width > 100 and height > 100
        index = json.loads((folder / "index.json").read_text())
        predictions = pd.read_parquet(workdir / f"results/predictions/{model}.parquet")
        if (predictions["true_label"] != predictions["pred_label"]).any():
            kinds = {row["kind"] for row in index["explained"]}
            assert {"wrong", "mistake"} <= kinds
        assert index["max_probability_difference"] < 1e-3
        assert index["target_grid"] == ([1, 1] if model.startswith("resnet50") else [8, 8])  # 32 px
    assert planned_jobs(workdir) == set()
    assert planned_jobs(workdir, "explain") == set()
    workdir = clone_run(explained_run, tmp_path / "run")  # the report is written into the run
    report = snakemake(workdir, "--report", "report.html", "all", "explain")
    assert (workdir / "report.html").stat().st_size > 0, report.stderr[-2000:]


def test_explain_models_must_be_configured_models():
    from quiltflow.dag.config import explain_models, validate_config

    config = {
        "dataset": {"format": "quilt"},
        "models": {"b": {"architecture": "custom_cnn"}, "a": {"architecture": "custom_cnn"}},
    }
    assert explain_models(validate_config(config)) == ["a", "b"]
    assert explain_models(validate_config({**config, "explain": {"models": ["b"]}})) == ["b"]
    with pytest.raises(UserError, match=r"^config key explain.models: 'c' is not a model of this config"):
        validate_config({**config, "explain": {"models": ["c"]}})
