"""quiltflow.compare.multilabel: the video-level comparison of multi-label (multi-hot) predictions."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss, roc_auc_score

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
sys.path.insert(0, str(WORKFLOW))

from quiltflow.compare import multilabel as cml  # noqa: E402
from quiltflow.compare.rows import Row  # noqa: E402
from quiltflow.compare.run import compare_models  # noqa: E402
from quiltflow.compare.testset import TestSet  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.records.split_report import SplitReport  # noqa: E402

CLASSES = ["breast", "derm", "gi", "lung", "renal"]  # renal: never in test
TRAIN = {"breast": 300, "derm": 120, "gi": 600, "lung": 80, "renal": 10}  # of 1000 train images
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_VIDEOS, FRAMES = 40, 8


def _truth(seed: int = 0) -> np.ndarray:
    """Video-level label lists (every frame of a video carries its list), 'renal' never present."""
    rng = np.random.default_rng(seed)
    video = rng.random((N_VIDEOS, len(CLASSES))) < [0.4, 0.3, 0.5, 0.25, 0.0]
    video[~video.any(axis=1), 2] = True  # every video has a label
    return np.repeat(video, FRAMES, axis=0)


def _scores(truth: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Probabilities with noise shared by a video's frames (frames are near-copies)."""
    rng = np.random.default_rng(seed)
    video_noise = np.repeat(rng.normal(0, noise, (N_VIDEOS, len(CLASSES))), FRAMES, axis=0)
    frame_noise = rng.normal(0, noise / 10, truth.shape)
    return (1 / (1 + np.exp(-(4 * (truth - 0.5) + video_noise + frame_noise)))).astype(np.float32)


def _table(truth: np.ndarray, probs: np.ndarray, groups=None) -> pa.Table:
    n, k = truth.shape
    lists = {
        "probabilities": (probs.astype(np.float32), pa.float32()),
        "true_multi_hot": (truth.astype(np.int8), pa.int8()),
        "pred_multi_hot": ((probs >= 0.5).astype(np.int8), pa.int8()),
    }
    columns = {
        "image_id": pa.array([f"img{i:04d}.jpg" for i in range(n)]),
        "group": pa.array(groups if groups is not None else [f"video{i // FRAMES:03d}" for i in range(n)]),
        "true_label": pa.array(truth.argmax(axis=1).astype(np.int32)),
        "pred_label": pa.array(probs.argmax(axis=1).astype(np.int32)),
    }
    for name, (values, kind) in lists.items():
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), kind), k).cast(pa.list_(kind))
    return pa.table(columns)


def make_run(tmp_path: Path, models: dict[str, np.ndarray], truth: np.ndarray, *, tta=False, groups=None) -> dict:
    """Label map (task multilabel), split report, per model metrics JSON, predictions, history (+ TTA)."""
    splits = tmp_path / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(CLASSES)}
    (splits / "label_map.json").write_text(
        json.dumps({"classes": CLASSES, "class_to_index": index, "task": "multilabel"})
    )
    report = {
        "counts": {"train": 1000, "test": len(truth)},
        "class_counts": {"train": TRAIN},
    }
    (splits / "split_report.json").write_text(json.dumps(report))
    paths: dict = {"metrics": [], "predictions": [], "histories": [], "tta_metrics": [], "tta_predictions": []}
    variants = [(name, "", probs) for name, probs in models.items()]
    if tta:
        variants += [(name, "+tta", np.clip(probs * 0.98 + 0.01, 0, 1)) for name, probs in models.items()]
    for name, suffix, probs in variants:
        prediction = tmp_path / "predictions" / f"{name}{suffix}.parquet"
        prediction.parent.mkdir(exist_ok=True)
        pq.write_table(_table(truth, probs, groups), prediction)
        doc = {
            "schema_version": 1, "task": "multilabel", "model": f"{name}{suffix}", "architecture": "custom_cnn",
            "weights": "none", "dataset": {"sha256": "0" * 64, "n_manifest": len(truth), "skipped_by_reason": {}},
            "timing": {"train_seconds": 1.0, "eval_seconds": 0.1},
            "metrics": {"n_test": len(truth), "n_classes": len(CLASSES), "class_names": CLASSES},
        }  # fmt: skip
        if suffix:
            doc["tta"] = {"views": 8}
        metrics = tmp_path / "metrics" / f"{name}{suffix}.json"
        metrics.parent.mkdir(exist_ok=True)
        metrics.write_text(json.dumps(doc))
        history = tmp_path / "models" / name / "history.csv"
        history.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"epoch": [0, 1], "loss": [0.7, 0.5], "val_loss": [0.72, 0.6]}).to_csv(history, index=False)
        key = "tta_" if suffix else ""
        paths[f"{key}metrics"].append(str(metrics))
        paths[f"{key}predictions"].append(str(prediction))
        if not suffix:
            paths["histories"].append(str(history))
    paths["split_report"], paths["label_map"] = str(splits / "split_report.json"), str(splits / "label_map.json")
    return paths


def outputs(tmp_path: Path, names: list[str]) -> dict:
    out = tmp_path / "results"
    return {
        "json_path": str(out / "comparison.json"), "csv_path": str(out / "comparison.csv"),
        "md_path": str(out / "comparison.md"), "html_path": str(out / "comparison.html"),
        "metrics_plot": str(out / "plots" / "metrics.png"), "curves_plot": str(out / "plots" / "training_curves.png"),
        "confusion_plots": [str(out / "plots" / f"confusion_{n}.png") for n in names],
        "reliability_plots": [str(out / "plots" / f"reliability_{n}.png") for n in names],
        "ap_plot": str(out / "plots" / "per_label_ap.png"),
    }  # fmt: skip


def run(paths: dict, *, samples: int = 300, permutations: int = 500, **kwargs) -> dict:
    return compare_models(
        paths["metrics"], paths["predictions"], paths["histories"], paths["split_report"], paths["label_map"],
        seed=0, bootstrap_samples=samples, permutations=permutations, alpha=0.05,
        tta_metrics_paths=paths["tta_metrics"], tta_predictions_paths=paths["tta_predictions"], **kwargs,
    )  # fmt: skip


TRUTH = _truth()
MODELS = {"oracle": np.where(TRUTH, 0.9, 0.1).astype(np.float32), "noisy": _scores(TRUTH, 2.0, 1)}


def test_dispatch_rows_files_and_plots(tmp_path):
    paths = make_run(tmp_path, MODELS, TRUTH, tta=True)
    out = outputs(tmp_path, list(MODELS))
    doc = run(paths, **out)
    assert doc["task"] == "multilabel" and "video" in doc["unit"] and doc["n_groups"] == N_VIDEOS
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == ["oracle", "noisy", "oracle+tta", "noisy+tta", "ensemble", "label_frequency_baseline"]
    assert rows["oracle+tta"]["kind"] == "tta" and rows["ensemble"]["kind"] == "ensemble"
    baseline = rows["label_frequency_baseline"]
    assert baseline["auc_macro"] == pytest.approx(0.5) and baseline["decides"] == ["gi"]  # train prevalence 0.6
    assert baseline["map_macro"] == pytest.approx(TRUTH[:, :4].mean(axis=0).mean())  # AP = test prevalence
    assert rows["oracle"]["map_macro"] == 1.0 and rows["oracle"]["subset_accuracy"] == 1.0
    assert doc["per_label"]["ap"]["oracle"]["renal"] is None and doc["per_label"]["support"]["renal"] == 0
    assert any("narration" in c for c in doc["caveats"]) and any("renal" in c for c in doc["caveats"])
    tta_tests = [t for t in doc["pairwise"] if t["a"] == "oracle+tta"]
    assert {t["b"] for t in tta_tests} == {"oracle"} and {t["metric"] for t in tta_tests} == {"map_macro", "auc_macro"}
    for key in ("json_path", "csv_path", "md_path", "html_path"):
        assert Path(out[key]).stat().st_size > 0
    for path in [
        out["metrics_plot"],
        out["curves_plot"],
        out["ap_plot"],
        *out["confusion_plots"],
        *out["reliability_plots"],
    ]:
        assert Path(path).read_bytes()[:8] == PNG_MAGIC and Path(path).stat().st_size > 5000
    md = Path(out["md_path"]).read_text()
    assert "## Average precision per label" in md and "| renal | 0 |" in md
    assert json.loads(Path(out["json_path"]).read_text())["rows"][0]["name"] == "oracle"
    assert 'id="comparison-table"' in Path(out["html_path"]).read_text()
    assert Path(out["csv_path"]).read_text().splitlines()[0].startswith("model,kind,map_macro,map_macro_ci_low")


def test_narration_caveat_only_for_quilt_lists(tmp_path):
    paths = make_run(tmp_path, MODELS, TRUTH)
    doc = run(paths, samples=100, permutations=100, narration_labels=False)
    assert doc["narration_labels"] is False and not any("narration" in c for c in doc["caveats"])


def test_point_estimates_equal_sklearn(tmp_path):
    doc = run(make_run(tmp_path, MODELS, TRUTH), samples=50, permutations=50)
    probs, truth = MODELS["noisy"], TRUTH
    hot = probs >= 0.5
    row = next(r for r in doc["rows"] if r["name"] == "noisy")
    present = [c for c in range(len(CLASSES)) if truth[:, c].any()]
    aps = [average_precision_score(truth[:, c], probs[:, c]) for c in present]
    assert row["map_macro"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert row["auc_macro"] == pytest.approx(np.mean([roc_auc_score(truth[:, c], probs[:, c]) for c in present]))
    used = [c for c in range(len(CLASSES)) if truth[:, c].any() or hot[:, c].any()]
    assert row["f1_macro"] == pytest.approx(f1_score(truth, hot, average="macro", labels=used, zero_division=0))
    assert row["f1_micro"] == pytest.approx(f1_score(truth, hot, average="micro"))
    assert row["subset_accuracy"] == pytest.approx(accuracy_score(truth, hot))
    assert row["hamming_loss"] == pytest.approx(hamming_loss(truth, hot))
    assert row["top1_in_labels"] == pytest.approx(truth[np.arange(len(truth)), probs.argmax(1)].mean())
    for c in present:
        assert doc["per_label"]["ap"]["noisy"][CLASSES[c]] == pytest.approx(aps[present.index(c)])


def test_weighted_ap_auc_equal_sklearn_with_multiplicities():
    """A bootstrap resample = video multiplicities: the vectorised scores equal scikit-learn with
    those multiplicities as sample weights (ties included)."""
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(30), 7)
    scores = np.round(rng.random(len(codes)), 1)  # many ties
    positive = rng.random(len(codes)) < 0.3
    weights = rng.integers(0, 3, (5, 30)).astype(float)
    ap, auc = cml._ap_auc(cml._ranked(scores, positive, codes), weights)
    for b in range(5):
        w = weights[b, codes]
        assert ap[b] == pytest.approx(average_precision_score(positive, scores, sample_weight=w), abs=1e-12)
        assert auc[b] == pytest.approx(roc_auc_score(positive, scores, sample_weight=w), abs=1e-12)


def test_intervals_contain_estimate_and_widen_with_correlated_videos(tmp_path):
    noisy = {"noisy": _scores(TRUTH, 2.0, 1)}
    clustered = run(make_run(tmp_path / "v", noisy, TRUTH), permutations=50)
    per_image = run(
        make_run(tmp_path / "i", noisy, TRUTH, groups=[f"g{i}" for i in range(len(TRUTH))]), permutations=50
    )
    for doc in (clustered, per_image):
        for r in doc["rows"]:
            for metric in cml.WITH_CI:
                low, high = r[f"{metric}_ci"]
                assert low <= r[metric] <= high
    width = {id(d): np.diff(d["rows"][0]["map_macro_ci"])[0] for d in (clustered, per_image)}
    assert width[id(clustered)] > 1.5 * width[id(per_image)]  # frames of a video are near-copies
    assert clustered["rows"][0]["design_effect"] > 1.5


def test_truth_beats_baseline_and_identical_models_tie(tmp_path):
    models = {"oracle": MODELS["oracle"], "noisy": MODELS["noisy"], "twin": MODELS["noisy"].copy()}
    doc = run(make_run(tmp_path, models, TRUTH), permutations=1000, ensemble=False)
    vs = {(t["a"], t["metric"]): t for t in doc["vs_baseline"]}
    assert vs[("oracle", "map_macro")]["p_value"] < 0.01 and vs[("oracle", "map_macro")]["better_than_baseline"]
    assert vs[("oracle", "auc_macro")]["p_value_holm"] < 0.05
    twins = [t for t in doc["pairwise"] if {t["a"], t["b"]} == {"noisy", "twin"}]
    assert len(twins) == 2 and all(t["p_value"] == 1.0 and t["difference"] == 0 for t in twins)
    assert "no significant difference" in twins[0]["verdict"]
    assert not any(r["name"] == "ensemble" for r in doc["rows"])


def test_folds_add_corrected_t_tests_and_pool_train_prevalence(tmp_path):
    paths = make_run(tmp_path, MODELS, TRUTH)
    for path in paths["predictions"]:
        table = pq.read_table(path)
        video = np.array([int(g[5:]) for g in table.column("group").to_pylist()])
        pq.write_table(table.append_column("fold", pa.array((video % 2).astype(np.int32))), path)
    report = {"folds": 2, "counts": {"fold0a": 100, "fold0b": 100, "fold1a": 100, "fold1b": 300},
              "class_counts": {b: {"gi": n // 2} for b, n in (("fold0a", 100), ("fold0b", 100), ("fold1a", 100), ("fold1b", 300))}}  # fmt: skip
    Path(paths["split_report"]).write_text(json.dumps(report))
    prevalence = cml.train_prevalence(SplitReport.read(paths["split_report"]), CLASSES)
    assert prevalence[2] == pytest.approx(0.5)  # run 0 trains on fold1b, run 1 on fold0b: (150+50)/(300+100)
    doc = run(paths, samples=100, permutations=100)
    # Run 0 tests on fold 0 (200), validates on fold1a and trains on fold1b (300); run 1: 400 against fold0b (100).
    assert doc["test_train_ratio"] == pytest.approx((200 / 300 + 400 / 100) / 2)
    assert doc["folds"] == 2 and {t["test"] for t in doc["pairwise"]} == {
        "video_swap_permutation",
        "corrected_resampled_t",
    }
    assert all("map_macro_fold_mean" in r for r in doc["rows"])


def test_missing_multi_hot_or_stale_metrics_are_errors(tmp_path):
    paths = make_run(tmp_path, {"noisy": MODELS["noisy"]}, TRUTH)
    table = pq.read_table(paths["predictions"][0])
    pq.write_table(table.drop(["pred_multi_hot"]), paths["predictions"][0])
    with pytest.raises(UserError, match="pred_multi_hot"):
        run(paths)
    paths = make_run(tmp_path / "b", {"noisy": MODELS["noisy"]}, TRUTH)
    doc = json.loads(Path(paths["metrics"][0]).read_text())
    Path(paths["metrics"][0]).write_text(json.dumps({**doc, "task": "multiclass"}))
    with pytest.raises(UserError, match="stale"):
        run(paths)


def test_bootstrap_is_vectorised():
    """2000 video resamples of ~1000 images x 18 labels for two rows in seconds."""
    rng = np.random.default_rng(0)
    n, k, videos = 1000, 18, 200
    groups = np.repeat(np.arange(videos), n // videos)
    truth = rng.random((videos, k))[groups] < 0.2
    rows = [
        Row(f"row{i}", "model", rng.random((1, n, k)), rng.random((1, n, k)) < 0.2, "none", None, True)
        for i in range(2)
    ]
    test_set = TestSet("m", "p", "0", np.arange(n), groups.astype(str), truth.argmax(1), np.zeros((1, n)), (0,))
    units = cml._Units(test_set, truth)
    start = time.perf_counter()
    resampled = cml._bootstrap(rows, units, samples=2000, seed=0)
    assert resampled["map_macro"].shape == (2000, 2)
    assert time.perf_counter() - start < 20


def test_integer_truth_scores_as_bool_truth(tmp_path):
    """0/1 integer matrices (multilabel.multi_hot gives int8) must score as bool ones: ~1 is -2 on integers."""
    paths = make_run(tmp_path, MODELS, TRUTH)
    models, test_set = cml.load_multilabel_models(paths["metrics"], paths["predictions"], CLASSES)
    truth = test_set.multi_hot
    prevalence = np.array([TRAIN[c] for c in CLASSES]) / 1000
    args = {"seed": 0, "bootstrap_samples": 50, "permutations": 50, "alpha": 0.05}
    as_bool = cml.build_multilabel_comparison(models, test_set, truth, CLASSES, prevalence, **args)
    as_int = [replace(m, decisions=m.decisions.astype(np.int8)) for m in models]
    doc = cml.build_multilabel_comparison(as_int, test_set, truth.astype(np.int8), CLASSES, prevalence, **args)
    assert doc == as_bool
    probs = MODELS["noisy"][None]
    assert cml._ece(probs, TRUTH.astype(np.int8)) == pytest.approx(cml._ece(probs, TRUTH))


def test_one_test_video_gives_no_intervals_multilabel(tmp_path):
    paths = make_run(tmp_path, MODELS, TRUTH, groups=["video0"] * len(TRUTH))
    out = outputs(tmp_path, list(MODELS))
    doc = run(paths, samples=50, permutations=50, **out)
    assert doc["n_groups"] == 1
    for row in doc["rows"]:
        assert all(row[f"{m}_ci"] is None for m in cml.WITH_CI) and row["design_effect"] is None
    assert all(t["difference_ci"] is None for t in doc["pairwise"] + doc["vs_baseline"])
    assert any("at least 4 test videos" in c and "Only 1 test video (" in c for c in doc["caveats"])
    assert not any("intervals are wide" in c for c in doc["caveats"])
    md = Path(out["md_path"]).read_text()
    assert "[n/a]" in md
    assert "n/a" in Path(out["html_path"]).read_text()
