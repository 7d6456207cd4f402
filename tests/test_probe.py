"""The probe stage (issue 26): label budgets of videos, linear probe and weighted k-NN on cached
features, their summary with video-level statistics, and `snakemake probe` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from quiltflow.compare.probe_summary import summarise_probe
from quiltflow.core.errors import UserError
from quiltflow.evaluation import probe
from sklearn.neighbors import KNeighborsClassifier
from support import MULTILABEL_CONFIGS, PRETRAIN_CONFIGS
from workflow_runner import clone_run, planned_jobs, rules_of, snakemake

FRACTIONS = (0.01, 0.1, 0.5, 1.0)


def _videos(n_videos: int = 60, frames: int = 5, classes: int = 4, seed: int = 0):
    """Groups and labels: each video mostly of one class, with a minority frame of another."""
    rng = np.random.default_rng(seed)
    video_class = np.arange(n_videos) % classes
    groups = np.repeat([f"v{i:03d}" for i in range(n_videos)], frames)
    labels = np.repeat(video_class, frames)
    labels[::frames] = (labels[::frames] + 1) % classes  # one off-class frame per video
    return groups, labels, rng


def _split(x, y, groups, prefix="i"):
    ids = np.array([f"{prefix}{i}" for i in range(len(y))])
    return probe.Split(np.asarray(x, np.float32), np.asarray(y), ids, np.asarray(groups))


def _clustered(n_videos: int, frames: int, classes: int, dim: int, seed: int, prefix: str):
    """A feature set whose classes are well separated clusters (the answers are known)."""
    groups, labels, rng = _videos(n_videos, frames, classes, seed)
    groups = np.char.add(prefix, groups)
    centres = np.eye(classes, dim) * 4.0
    x = centres[labels] + rng.normal(scale=0.5, size=(len(labels), dim))
    return _split(x, labels, groups, prefix)


# --------------------------------------------------------------------------- budgets


def test_budgets_are_nested_stratified_and_seeded():
    groups, labels, _ = _videos()
    budgets = probe.label_budgets(groups, labels, FRACTIONS, seed=3)
    strata = probe.video_labels(groups, labels)
    assert [b.fraction for b in budgets] == sorted(FRACTIONS)
    for small, large in zip(budgets, budgets[1:]):
        assert set(small.videos) <= set(large.videos), "a smaller budget's video is missing from a larger one"
    for budget in budgets:
        assert {strata[v] for v in budget.videos} == set(range(4)), "every class needs a video"
        assert budget.n_images == int(np.isin(groups, budget.videos).sum())
    assert budgets[0].videos and len(budgets[0].videos) == 4  # 1 % of 15 videos per class -> 1 each
    assert set(budgets[-1].videos) == set(groups)
    again = probe.label_budgets(groups, labels, FRACTIONS, seed=3)
    assert [b.videos for b in again] == [b.videos for b in budgets]
    other = probe.label_budgets(groups, labels, FRACTIONS, seed=4)
    assert [b.videos for b in other] != [b.videos for b in budgets]


def test_video_label_is_the_most_frequent_frame_label():
    groups = np.array(["a", "a", "a", "b", "b"])
    labels = np.array([2, 1, 2, 0, 1])
    assert probe.video_labels(groups, labels) == {"a": 2, "b": 0}  # tie in b: the smaller index


def test_budgets_reject_fractions_outside_unit_interval():
    groups, labels, _ = _videos()
    with pytest.raises(UserError, match="label_fractions"):
        probe.label_budgets(groups, labels, [0.0, 1.0], seed=0)


def test_protocol_trains_only_on_training_videos_and_tests_every_fit():
    run = probe.RunData(
        0,
        7,
        _clustered(40, 4, 4, 16, 0, "t"),
        _clustered(12, 4, 4, 16, 1, "v"),
        _clustered(12, 4, 4, 16, 2, "s"),
    )
    result = probe.run_protocol([run], 4, probe.ProbeSettings(fractions=FRACTIONS))
    held_out = set(run.val.groups) | set(run.test.groups)
    for budget in result.budgets:
        assert not set(budget["videos"]) & held_out
        assert set(budget["videos"]) <= set(run.train.groups)
    frame = result.predictions
    assert list(frame.columns) == [
        "image_id",
        "group",
        "true_label",
        "pred_label",
        "probabilities",
        "fold",
        "seed",
        "fraction",
        "method",
    ]
    assert len(frame) == len(FRACTIONS) * len(probe.METHODS) * len(run.test.labels)
    for (fraction, method), cell in frame.groupby(["fraction", "method"]):
        assert (cell["image_id"].to_numpy() == run.test.ids).all()  # validation/test never change
        if fraction == 1.0 or method == "knn":
            # Separated clusters; a 4-video budget's off-class frames may still mislead the probe.
            assert (cell["true_label"] == cell["pred_label"]).mean() == 1.0
    again = probe.run_protocol([run], 4, probe.ProbeSettings(fractions=FRACTIONS))
    assert np.allclose(np.stack(again.predictions["probabilities"]), np.stack(frame["probabilities"]))


# --------------------------------------------------------------------------- methods


def test_knn_hand_made_answer():
    # Two training points per class on the axes; the query at 30 degrees from x votes mostly for x.
    train = np.array([[1, 0], [2, 0], [0, 1], [0, 3]], np.float32)
    labels = np.array([0, 0, 1, 1])
    query = np.array([[np.cos(np.pi / 6), np.sin(np.pi / 6)]], np.float32)
    probs = probe.knn_probabilities(train, labels, query, 2, k=4, temperature=0.1)
    w0, w1 = np.exp(np.cos(np.pi / 6) / 0.1), np.exp(np.sin(np.pi / 6) / 0.1)
    assert probs[0] == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-5)
    # k=1: only the nearest neighbour votes.
    assert probe.knn_probabilities(train, labels, query, 2, k=1, temperature=0.1)[0] == pytest.approx([1, 0])


def test_knn_matches_scikit_learn_brute_force():
    rng = np.random.default_rng(1)
    x_train, x_query = rng.normal(size=(600, 24)), rng.normal(size=(300, 24))
    y_train = rng.integers(0, 5, 600)
    ours = probe.knn_probabilities(x_train, y_train, x_query, 5, k=20, temperature=0.07)
    reference = KNeighborsClassifier(
        n_neighbors=20, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.07)
    ).fit(x_train, y_train)
    assert np.array_equal(ours.argmax(axis=1), reference.predict(x_query))
    assert np.allclose(ours, reference.predict_proba(x_query), atol=1e-4)


def test_knn_blocks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(2)
    x, y, q = rng.normal(size=(200, 8)), rng.integers(0, 3, 200), rng.normal(size=(50, 8))
    whole = probe.knn_probabilities(x, y, q, 3, k=20, temperature=0.07)
    monkeypatch.setattr(probe, "_BLOCK_ELEMENTS", 200 * 7)  # blocks of 7 queries
    assert np.allclose(probe.knn_probabilities(x, y, q, 3, k=20, temperature=0.07), whole)


def test_linear_probe_hand_made_answer_and_c_from_the_grid():
    train, val = _clustered(30, 4, 3, 6, 0, "t"), _clustered(9, 4, 3, 6, 1, "v")
    settings = probe.ProbeSettings(c_grid=(0.01, 1.0))
    scaler, model, c = probe.linear_probe(train, val, 3, settings)
    assert c in settings.c_grid
    # A point on a class centre is that class.
    centres = np.eye(3, 6) * 4.0
    assert list(model.predict(scaler.transform(centres))) == [0, 1, 2]


def test_empty_validation_uses_the_grids_middle_c_and_empty_test_predicts_nothing():
    train, test = _clustered(12, 4, 3, 6, 0, "t"), _clustered(6, 4, 3, 6, 2, "s")
    empty = test.take(np.zeros(len(test.labels), dtype=bool))
    settings = probe.ProbeSettings(fractions=(1.0,), c_grid=(0.01, 0.1, 10.0))
    result = probe.run_protocol([probe.RunData(0, 1, train, empty, test)], 3, settings)
    assert [b["c"]["linear"] for b in result.budgets] == [0.1]
    assert len(probe.run_protocol([probe.RunData(0, 1, train, test, empty)], 3, settings).predictions) == 0


def _multilabel(n_videos: int, frames: int, seed: int, prefix: str, labels: int = 3, dim: int = 8):
    """Videos with random label sets (each at least one label, every frame the video's set) and
    features = 4 x multi-hot + noise: each label is linearly separable, so the answers are known."""
    rng = np.random.default_rng(seed)
    sets = rng.integers(0, 2, size=(n_videos, labels))
    sets[sets.sum(axis=1) == 0, rng.integers(0, labels)] = 1
    y = np.repeat(sets, frames, axis=0)
    x = np.hstack([4.0 * y, np.zeros((len(y), dim - labels))]) + rng.normal(scale=0.5, size=(len(y), dim))
    groups = np.repeat([f"{prefix}v{i:03d}" for i in range(n_videos)], frames)
    return _split(x, y, groups, prefix)


def test_multilabel_budgets_are_nested_and_cover_every_label():
    train = _multilabel(50, 3, 0, "t", labels=5)
    # Label 4 is rare: only two videos carry it.
    y = train.labels.copy()
    y[:, 4] = 0
    y[np.isin(train.groups, ["tv007", "tv031"]), 4] = 1
    budgets = probe.label_budgets(train.groups, y, FRACTIONS, seed=1)
    _, presence = probe.video_presence(train.groups, y)
    videos = np.unique(train.groups)
    for small, large in zip(budgets, budgets[1:]):
        assert set(small.videos) <= set(large.videos)
    for budget in budgets:
        carried = presence[np.isin(videos, budget.videos)].any(axis=0)
        assert carried.all(), f"a label without a positive video at {budget.fraction}"
    assert probe.video_strata(train.groups, y)["tv007"] == 4  # the rarest label is the stratum
    assert len(budgets[0].videos) < 10 and set(budgets[-1].videos) == set(videos)
    assert [b.videos for b in probe.label_budgets(train.groups, y, FRACTIONS, seed=1)] == [b.videos for b in budgets]


def test_multilabel_budgets_cover_a_label_that_is_no_videos_stratum():
    # Labels A, B, D: 2 videos each; C: 3 videos, each also carrying a rarer label, so C is no
    # video's stratum and a 1 % budget (one video per stratum) misses C in 1 of 8 draws unless the
    # covering step adds a C video; E: the common filler label.
    sets = {"a1": "AC", "a2": "A", "b1": "BC", "b2": "B", "d1": "DC", "d2": "D"}
    sets |= {f"e{i}": "E" for i in range(30)}
    groups = np.array(list(sets))
    hot = np.array([[letter in sets[g] for letter in "ABCDE"] for g in groups], dtype=np.int64)
    assert 2 not in set(probe.video_strata(groups, hot).values())
    for seed in range(20):
        smallest = probe.label_budgets(groups, hot, [0.01], seed=seed)[0]
        assert {"a1", "b1", "d1"} & set(smallest.videos), f"seed {seed}: no video carries label C"


def test_multilabel_knn_scores_are_weighted_label_shares():
    # Neighbours on the axes carry labels {0}, {0, 1}, {1}; the query at 30 degrees from x.
    train = np.array([[1, 0], [1, 1e-6], [0, 1]], np.float32)
    hot = np.array([[1, 0], [1, 1], [0, 1]])
    query = np.array([[np.cos(np.pi / 6), np.sin(np.pi / 6)]], np.float32)
    scores = probe.knn_probabilities(train, hot, query, 2, k=3, temperature=0.1)
    w = np.exp(np.array([np.cos(np.pi / 6), np.cos(np.pi / 6), np.sin(np.pi / 6)]) / 0.1)
    assert scores[0] == pytest.approx([(w[0] + w[1]) / w.sum(), (w[1] + w[2]) / w.sum()], rel=1e-4)


def test_multilabel_protocol_finds_separable_labels():
    run = probe.RunData(0, 7, _multilabel(40, 4, 0, "t"), _multilabel(10, 4, 1, "v"), _multilabel(12, 4, 2, "s"))
    settings = probe.ProbeSettings(fractions=(0.1, 1.0))
    result = probe.run_protocol([run], 3, settings)
    frame = result.predictions
    assert {"true_multi_hot", "pred_multi_hot"} <= set(frame.columns)
    for _, cell in frame[frame["fraction"] == 1.0].groupby("method"):
        truth, probs = np.stack(cell["true_multi_hot"]), np.stack(cell["probabilities"])
        assert (np.stack(cell["pred_multi_hot"]) == truth).all()  # separable: every decision right at 0.5
        assert np.array_equal(cell["true_label"], truth.argmax(axis=1))  # the first true label
        assert probs.min() >= 0 and probs.max() <= 1
    assert all(b["c"]["linear"] in settings.c_grid for b in result.budgets)
    # A label absent from a budget's training images scores its prevalence (0), not an error.
    absent = probe.RunData(0, 7, run.train.take(run.train.labels[:, 2] == 0), run.val, run.test)
    probs = np.stack(probe.run_protocol([absent], 3, settings).predictions["probabilities"])
    assert np.allclose(probs[:, 2][: len(run.test.labels)], 0.0)


# --------------------------------------------------------------------------- summary


def test_summary_tests_representations_in_one_holm_family(tmp_path):
    runs_good = [
        probe.RunData(
            0, s, _clustered(40, 4, 4, 16, 0, "t"), _clustered(12, 4, 4, 16, 1, "v"), _clustered(16, 4, 4, 16, 2, "s")
        )
        for s in (1, 2)
    ]
    rng = np.random.default_rng(5)
    # A worse representation of the same images: mostly noise.
    runs_bad = [
        probe.RunData(
            r.fold,
            r.seed,
            *(
                probe.Split(s.features + rng.normal(scale=6, size=s.features.shape), s.labels, s.ids, s.groups)
                for s in (r.train, r.val, r.test)
            ),
        )
        for r in runs_good
    ]
    settings = probe.ProbeSettings(fractions=(0.1, 1.0), c_grid=(0.1, 1.0))
    paths, budgets = {}, {}
    for name, runs in (("good", runs_good), ("bad", runs_bad)):
        result = probe.run_protocol(runs, 4, settings)
        paths[name], budgets[name] = tmp_path / f"{name}.parquet", tmp_path / f"{name}.budgets.json"
        result.predictions.to_parquet(paths[name], index=False)
        budgets[name].write_text(json.dumps({"budgets": result.budgets}))
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"classes": list("ABCD"), "class_to_index": {}, "task": "multiclass"}))
    outputs = {
        "json": tmp_path / "s.json",
        "csv": tmp_path / "s.csv",
        "md": tmp_path / "s.md",
        "plot": tmp_path / "plot.png",
    }
    document = summarise_probe(
        paths, budgets, str(label_map), seed=0, bootstrap_samples=200, permutations=200, alpha=0.05, outputs=outputs
    )
    assert len(document["rows"]) == 2 * 2 * 2
    good = next(r for r in document["rows"] if r["name"] == "good/linear@1")
    assert good["balanced_accuracy"] == 1.0 and good["balanced_accuracy_ci"] is not None
    assert good["train_videos"] == 40
    tests = document["tests"]
    assert len(tests) == 4  # one pair at each (method, fraction)
    assert all(t["p_value_holm"] >= t["p_value"] for t in tests)
    assert any(t["better"] == "good/linear@1" for t in tests)
    assert outputs["plot"].stat().st_size > 0
    assert {"balanced_accuracy_low", "auc_macro_high"} <= set(pd.read_csv(outputs["csv"]).columns)


def test_multilabel_summary_scores_map_and_tests_it(tmp_path):
    good = [
        probe.RunData(0, s, _multilabel(30, 3, 0, "t"), _multilabel(8, 3, 1, "v"), _multilabel(16, 3, 2, "s"))
        for s in (1, 2)
    ]
    rng = np.random.default_rng(3)
    noisy = [
        probe.RunData(
            r.fold,
            r.seed,
            *(
                probe.Split(s.features + rng.normal(scale=8, size=s.features.shape), s.labels, s.ids, s.groups)
                for s in (r.train, r.val, r.test)
            ),
        )
        for r in good
    ]
    settings = probe.ProbeSettings(fractions=(0.5, 1.0), c_grid=(0.01, 1.0))
    paths, budgets = {}, {}
    for name, runs in (("good", good), ("noisy", noisy)):
        result = probe.run_protocol(runs, 3, settings)
        paths[name], budgets[name] = tmp_path / f"{name}.parquet", tmp_path / f"{name}.budgets.json"
        result.predictions.to_parquet(paths[name], index=False)
        budgets[name].write_text(json.dumps({"settings": {"c_grid": [0.01, 1.0]}, "budgets": result.budgets}))
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"classes": list("ABC"), "class_to_index": {}, "task": "multilabel"}))
    outputs = {key: tmp_path / f"s.{key}" for key in ("json", "csv", "md")} | {"plot": tmp_path / "plot.png"}
    document = summarise_probe(
        paths, budgets, str(label_map), seed=0, bootstrap_samples=200, permutations=200, alpha=0.05, outputs=outputs
    )
    assert document["task"] == "multilabel" and document["tested_metric"] == "map_macro"
    best = next(r for r in document["rows"] if r["name"] == "good/linear@1")
    assert best["map_macro"] == 1.0 and best["auc_macro"] == 1.0 and best["map_macro_ci"] is not None
    noisy_knn = next(r for r in document["rows"] if r["name"] == "noisy/knn@1")
    assert noisy_knn["map_macro"] < 0.9
    assert best["c_at_grid_edge"]["fits"] == 2 and "c_at_grid_edge" not in noisy_knn
    assert len(document["tests"]) == 4 and {t["metric"] for t in document["tests"]} == {"map_macro"}
    assert any(t["better"] == "good/linear@1" for t in document["tests"])
    assert "map_macro_low" in pd.read_csv(outputs["csv"]).columns


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.e2e
def test_snakemake_probe_compares_two_frozen_representations(pretrain_run, tmp_path):
    """`snakemake probe` on a clone of the pretraining run (config/test.yaml + SimCLR per fold): two
    frozen representations, the random ResNet50 (resnet50_frozen, weights none) and the SimCLR one
    (resnet50_ssl, weights pretrained:simclr, per-fold backbones), probed and tested against each other."""
    work = clone_run(pretrain_run, tmp_path / "run")
    planned = rules_of(planned_jobs(work, "probe", configfiles=PRETRAIN_CONFIGS))
    # Cached features only: no pretraining, training or image decoding beyond the random arm's features.
    assert planned <= {"extract_features", "probe_representation", "probe_summary", "probe"}, planned
    snakemake(work, "probe", configfiles=PRETRAIN_CONFIGS)
    results = work / "results"
    # Named by representation (quiltflow.dag.representations), each probed once whatever its models.
    representations = ("resnet50-none", "resnet50-pretrained-simclr")
    assert sorted(p.name for p in (results / "probe").glob("*.parquet")) == [f"{r}.parquet" for r in representations]
    for name in representations:
        frame = pd.read_parquet(results / "probe" / f"{name}.parquet")
        assert set(frame["method"]) == set(probe.METHODS)
        assert sorted(frame["fraction"].unique()) == list(FRACTIONS)
        assert sorted(frame["fold"].unique()) == [0, 1]
    summary = json.loads((results / "probe" / "summary.json").read_text())
    assert {r["representation"] for r in summary["rows"]} == set(representations)
    tests = summary["tests"]
    # One paired test per (method, fraction), every one between the two representations, one Holm family.
    assert len(tests) == len(probe.METHODS) * len(FRACTIONS)
    for test in tests:
        assert {test["a"].split("/")[0], test["b"].split("/")[0]} == set(representations)
        assert test["metric"] == "balanced_accuracy" and test["p_value_holm"] >= test["p_value"]
    linear = [r for r in summary["rows"] if r["method"] == "linear"]
    assert all(r["c_at_grid_edge"]["fits"] >= 1 for r in linear)
    assert (results / "plots" / "label_efficiency.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.e2e
def test_snakemake_probe_multilabel_end_to_end(multilabel_cv_run, tmp_path):
    """`snakemake probe` on a clone of the multi-label run (2 folds): its frozen ResNet50's cached
    features probed per label; the run's own results are left as they were."""
    work = clone_run(multilabel_cv_run, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in (work / "results" / "predictions").iterdir()}
    snakemake(work, "probe", configfiles=MULTILABEL_CONFIGS)
    results = work / "results"
    frame = pd.read_parquet(results / "probe" / "resnet50-none.parquet")
    assert {"true_multi_hot", "pred_multi_hot"} <= set(frame.columns)
    assert sorted(frame["fold"].unique()) == [0, 1]  # test predictions out of fold
    n_labels = len(json.loads((results / "splits" / "label_map.json").read_text())["classes"])
    assert {len(p) for p in frame["probabilities"]} == {n_labels}
    summary = json.loads((results / "probe" / "summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["tested_metric"] == "map_macro"
    assert all(0 <= r["map_macro"] <= 1 for r in summary["rows"])
    assert (results / "plots" / "label_efficiency.png").stat().st_size > 0
    assert {p: p.stat().st_mtime_ns for p in (results / "predictions").iterdir()} == before
