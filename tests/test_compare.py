"""quiltflow.compare (run, multiclass, plots): the video-level model comparison from metrics JSON + predictions Parquet only."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
sys.path.insert(0, str(WORKFLOW))

from quiltflow.compare.run import compare_models  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402
from support import COMPARE_CLASSES, COMPARE_TRAIN_COUNTS, accurate_predictions
from support import make_compare_run as make_run
from workflow_runner import run_without_tensorflow, run_workflow_script  # noqa: E402

CLASSES = COMPARE_CLASSES
TRAIN_COUNTS = COMPARE_TRAIN_COUNTS
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _y_true() -> np.ndarray:
    return np.repeat([0, 1, 2], [150, 90, 60])  # the test set of support.make_compare_run


def outputs(tmp_path: Path, names: list[str]) -> dict:
    out = tmp_path / "results"
    return {
        "json_path": str(out / "comparison.json"),
        "csv_path": str(out / "comparison.csv"),
        "md_path": str(out / "comparison.md"),
        "html_path": str(out / "comparison.html"),
        "metrics_plot": str(out / "plots" / "metrics.png"),
        "curves_plot": str(out / "plots" / "training_curves.png"),
        "confusion_plots": [str(out / "plots" / f"confusion_{n}.png") for n in names],
        "reliability_plots": [str(out / "plots" / f"reliability_{n}.png") for n in names],
    }


def run_compare(paths: dict, **kwargs) -> dict:
    return compare_models(
        paths["metrics"],
        paths["predictions"],
        paths["histories"],
        paths["split_report"],
        paths["label_map"],
        seed=0,
        bootstrap_samples=300,
        permutations=kwargs.pop("permutations", 2000),
        alpha=0.05,
        **kwargs,
    )


MODELS = {"good": accurate_predictions(0.85, 1), "weak": accurate_predictions(0.55, 2), "lazy": np.zeros(300, int)}


ROW_KEYS = {
    "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "f1_macro", "f1_macro_ci",
    "auc_macro", "auc_macro_ci", "pr_auc_macro", "ece", "video_accuracy", "video_accuracy_ci", "design_effect",
}  # fmt: skip


def test_compare_verdicts_baselines_and_files(tmp_path):
    paths = make_run(tmp_path, MODELS)
    out = outputs(tmp_path, list(MODELS))
    doc = run_compare(paths, **out)

    assert "resamples test videos" in doc["ci_method"] and doc["n_groups"] == 30
    assert doc["folds"] == 1 and doc["seeds"] == 1 and doc["design_effect"] > 0
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == ["good", "weak", "lazy", "ensemble", "majority_baseline", "stratified_baseline"]
    assert rows["majority_baseline"]["accuracy"] == pytest.approx(0.5)  # 150 of 300 are the train majority
    assert rows["majority_baseline"]["predicts"] == "adeno"
    assert rows["majority_baseline"]["auc_macro"] == 0.5  # constant scores rank nothing
    assert rows["stratified_baseline"]["expected_accuracy"] == pytest.approx(0.5 * 0.5 + 0.3 * 0.3 + 0.2 * 0.2)
    assert rows["good"]["accuracy"] == pytest.approx(np.mean(MODELS["good"] == _y_true()))
    for r in doc["rows"]:
        assert ROW_KEYS <= set(r), r["name"]
        for key in ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro", "video_accuracy"):
            assert r[f"{key}_ci"][0] <= r[key] <= r[f"{key}_ci"][1], (r["name"], key)
        assert r["n_test"] == 300 and "accuracy_fold_mean" not in r

    pairs = {(t["a"], t["b"], t["metric"]): t for t in doc["pairwise"]}
    assert len(pairs) == 6 * 3  # 4 models incl. the ensemble, 3 scores each
    for metric in ("accuracy", "balanced_accuracy", "f1_macro"):
        good_weak = pairs[("good", "weak", metric)]
        assert good_weak["test"] == "video_swap_permutation" and good_weak["better"] == "good", metric
        assert good_weak["verdict"].startswith("good is significantly better than weak on ")
        assert good_weak["difference_ci"][0] > 0 and good_weak["p_value"] <= good_weak["p_value_holm"]
    # One Holm family over every reported test: m = 18 pairwise + 12 against the majority.
    smallest = min(doc["pairwise"] + doc["vs_majority"], key=lambda t: t["p_value"])
    assert smallest["p_value_holm"] == pytest.approx(min(1.0, 30 * smallest["p_value"]))

    vs = {(t["a"], t["metric"]): t for t in doc["vs_majority"]}
    # A model identical to the majority baseline is not better than it on any score.
    for metric in ("accuracy", "balanced_accuracy", "f1_macro"):
        assert vs[("lazy", metric)]["better_than_majority"] is False
        assert vs[("lazy", metric)]["p_value"] == 1.0 and vs[("lazy", metric)]["difference"] == 0
        assert vs[("good", metric)]["better_than_majority"] is True
    assert vs[("lazy", "accuracy")]["verdict"] == (
        "no significant difference between lazy and majority_baseline on accuracy (video swap test, p=1)"
    )
    assert any(
        "lazy is not significantly better than always predicting the majority class" in c for c in doc["caveats"]
    )
    assert not any("synthetic" in c for c in doc["caveats"])

    saved = json.loads(Path(out["json_path"]).read_text())
    assert saved == json.loads(json.dumps(doc))
    with open(out["csv_path"]) as fh:
        table = list(csv.DictReader(fh))
    assert [r["model"] for r in table] == list(rows)
    assert {"accuracy_ci_low", "f1_macro_ci_high", "weights", "n_test", "auc_macro", "ece", "design_effect"} <= set(
        table[0]
    )
    md = Path(out["md_path"]).read_text()
    assert "| good | model |" in md and "good is significantly better than weak on balanced accuracy" in md
    assert "**The video is the unit**" in md and "| ensemble | ensemble |" in md
    assert "**Caveat:** lazy is not significantly better" in md

    for png in [out["metrics_plot"], out["curves_plot"], *out["confusion_plots"], *out["reliability_plots"]]:
        data = Path(png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png


def test_swaps_are_raised_until_a_test_of_the_family_can_survive_holm(tmp_path):
    """100 swaps give p >= 1/101, and Holm over 30 tests multiplies that past 0.05: no test could
    ever be significant. The comparison raises the swaps (10x margin) and says so."""
    doc = run_compare(make_run(tmp_path, MODELS), permutations=100, **outputs(tmp_path, list(MODELS)))
    family = len(doc["pairwise"]) + len(doc["vs_majority"])
    assert family == 30 and doc["permutations_requested"] == 100
    assert doc["permutations"] == math.ceil(10 * family / 0.05) - 1
    good_weak = next(t for t in doc["pairwise"] if (t["a"], t["b"], t["metric"]) == ("good", "weak", "accuracy"))
    assert good_weak["p_value_holm"] < 0.05 and good_weak["better"] == "good"
    assert min(t["p_value"] for t in doc["pairwise"]) >= 1 / (doc["permutations"] + 1)


def test_ensemble_can_be_switched_off(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"], "weak": MODELS["weak"]})
    doc = run_compare(paths, ensemble=False)
    assert [r["name"] for r in doc["rows"]] == ["good", "weak", "majority_baseline", "stratified_baseline"]


def _with_folds_and_seeds(table: pd.DataFrame, n_seeds: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every image once per seed; folds by video (3 folds), a little noise between seeds."""
    frames = []
    video = table["group"].str.slice(5).astype(int)
    for seed in range(n_seeds):
        frame = table.copy()
        frame["fold"] = (video + seed) % 3
        frame["seed"] = seed
        flip = rng.random(len(frame)) < 0.05
        frame.loc[flip, "pred_label"] = (frame.loc[flip, "true_label"] + 1) % 3
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_folds_and_seeds_add_fold_scores_and_the_corrected_t_test(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"], "weak": MODELS["weak"]})
    rng = np.random.default_rng(0)
    for i, pred_path in enumerate(paths["predictions"]):
        table = _with_folds_and_seeds(pd.read_parquet(pred_path), 2, rng).sample(frac=1, random_state=i)
        table.to_parquet(pred_path)  # rows shuffled: the comparison sorts them itself
        doc = json.loads(Path(paths["metrics"][i]).read_text())
        doc["metrics"]["n_test"] = len(table)
        doc["metrics"]["accuracy"] = float(np.mean(table["pred_label"] == table["true_label"]))
        doc["metrics"]["confusion_matrix"][0][0] += len(table) // 2
        doc["dataset"]["n_manifest"] = len(table)
        Path(paths["metrics"][i]).write_text(json.dumps(doc))
    buckets = [f"fold{f}{part}" for f in range(3) for part in "ab"]  # 50 test images per half-fold
    Path(paths["split_report"]).write_text(
        json.dumps(
            {"folds": 3, "counts": dict.fromkeys(buckets, 50), "class_counts": dict.fromkeys(buckets, TRAIN_COUNTS)}
        )
    )
    doc = run_compare(paths)
    assert doc["folds"] == 3 and doc["seeds"] == 2 and doc["n_test"] == 300 and doc["n_predictions"] == 600
    # A run tests on its fold (100) and trains on the rest less the validation half-fold (300 - 100 - 50).
    assert doc["test_train_ratio"] == pytest.approx(100 / 150)
    good = next(r for r in doc["rows"] if r["name"] == "good")
    assert 0 < good["accuracy_fold_sd"] < 0.2 and abs(good["accuracy_fold_mean"] - good["accuracy"]) < 0.01
    tests = {t["test"] for t in doc["pairwise"]}
    assert tests == {"video_swap_permutation", "corrected_resampled_t"}
    t_test = next(t for t in doc["pairwise"] if t["test"] == "corrected_resampled_t" and t["metric"] == "accuracy")
    # Six fold scores and the honest n_test/n_train: good leads (p 0.005) but not after Holm over 18 tests.
    assert t_test["df"] == 5 and t_test["t"] > 0 and t_test["p_value"] < 0.01


def test_a_video_in_two_folds_is_an_error(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"]})
    table = pd.read_parquet(paths["predictions"][0])
    table["fold"] = np.arange(len(table)) % 2  # frames of one video in both folds
    table.to_parquet(paths["predictions"][0])
    with pytest.raises(UserError, match="lies in several folds"):
        run_compare(paths)


def test_compare_is_seeded(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"], "weak": MODELS["weak"]})
    assert run_compare(paths) == run_compare(paths)


def test_synthetic_demo_caveat(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"]})
    doc = run_compare(paths, synthetic=True)
    assert doc["pairwise"] == [] and doc["synthetic"] is True
    assert "ensemble" not in {r["name"] for r in doc["rows"]}  # one model: no ensemble
    assert any("synthetic demo" in c for c in doc["caveats"])


def test_misaligned_image_ids_are_an_error(tmp_path):
    shifted = [f"other{i:04d}.jpg" for i in range(300)]
    paths = make_run(tmp_path, {"good": MODELS["good"], "weak": MODELS["weak"]}, ids={"weak": shifted})
    with pytest.raises(UserError, match="test images differ"):
        run_compare(paths)


def test_stale_metrics_file_is_an_error(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"], "weak": MODELS["weak"]})
    # Swap one model's predictions for another's: metrics JSON no longer matches its Parquet.
    paths["predictions"][0] = paths["predictions"][1]
    with pytest.raises(UserError, match="does not match"):
        run_compare(paths)


def test_missing_train_counts_is_an_error(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"]})
    Path(paths["split_report"]).write_text(json.dumps({"counts": {}}))
    with pytest.raises(UserError, match="class_counts.train"):
        run_compare(paths)


def test_compare_never_imports_tensorflow(tmp_path):
    """Run a full comparison in a fresh interpreter and check TensorFlow/Keras were never imported."""
    paths = make_run(tmp_path, {"good": MODELS["good"], "lazy": MODELS["lazy"]})
    out = outputs(tmp_path, ["good", "lazy"])
    run_without_tensorflow(
        f"""
        import json
        from quiltflow.compare.run import compare_models
        from quiltflow.compare import plots
        from quiltflow.compare import stats
        from quiltflow.records import metrics_document, predictions
        paths, out = json.loads({json.dumps(json.dumps([paths, out]))})
        compare_models(paths["metrics"], paths["predictions"], paths["histories"], paths["split_report"],
                       paths["label_map"], seed=0, bootstrap_samples=50, alpha=0.05, **out)
        """
    )
    assert Path(out["md_path"]).is_file()


def test_compare_script_wiring(tmp_path):
    """workflow/scripts/compare_models.py unpacks the rule's names and prints the table to its log."""
    paths = make_run(tmp_path, {"good": MODELS["good"], "lazy": MODELS["lazy"]})
    out = outputs(tmp_path, ["good", "lazy"])
    logger = logging.getLogger("quiltflow")
    handlers_before, stdout_before, stderr_before = list(logger.handlers), sys.stdout, sys.stderr
    run_workflow_script(
        "compare_models.py",
        input={
            "metrics": paths["metrics"],
            "predictions": paths["predictions"],
            "histories": paths["histories"],
            "split_report": paths["split_report"],
            "label_map": paths["label_map"],
            "tta_metrics": [],  # evaluation.tta off, as compare.smk passes it
            "tta_predictions": [],
        },
        output={
            "json": out["json_path"],
            "csv": out["csv_path"],
            "md": out["md_path"],
            "html": out["html_path"],
            "metrics_plot": out["metrics_plot"],
            "curves_plot": out["curves_plot"],
            "confusion": out["confusion_plots"],
            "reliability": out["reliability_plots"],
        },
        params={
            "seed": 0,
            "bootstrap_samples": 50,
            "alpha": 0.05,
            "permutations": 200,
            "ensemble": True,
            "synthetic": False,
            "narration_labels": True,
        },  # as compare.smk passes  # fmt: skip
        log=tmp_path / "compare.log",
    )
    # The script's setup_logging redirected the streams and replaced the handlers: all given back.
    assert logger.handlers == handlers_before
    assert sys.stdout is stdout_before and sys.stderr is stderr_before
    log_text = (tmp_path / "compare.log").read_text()
    assert "| good | model |" in log_text and "Caveat: lazy is not significantly better" in log_text
    page = Path(out["html_path"]).read_text(encoding="utf-8")  # the report's landing page
    assert '<table id="comparison-table">' in page and "<td>good</td>" in page
    assert page.count('<img src="data:image/png;base64,') == 2  # metrics plot and training curves
    for path in [
        out["json_path"],
        out["csv_path"],
        out["md_path"],
        out["metrics_plot"],
        out["curves_plot"],
        *out["confusion_plots"],
        *out["reliability_plots"],
    ]:
        assert Path(path).stat().st_size > 0, path


def test_test_train_ratio_leaves_the_validation_half_fold_out_of_training(tmp_path):
    """Run f tests on fold f, validates on half a of fold f+1 and trains on the rest (cv.run_buckets)."""
    from quiltflow.compare.testset import TestSet, ratio_test_to_train
    from quiltflow.records.split_report import SplitReport

    buckets = [f"fold{f}{part}" for f in range(5) for part in "ab"]
    report = tmp_path / "split_report.json"
    report.write_text(
        json.dumps(
            {"folds": 5, "counts": dict.fromkeys(buckets, 10), "class_counts": dict.fromkeys(buckets, {"a": 10})}
        )
    )
    folds = np.repeat(np.arange(5), 20)[None, :]  # the same 100 images, 20 per fold
    test_set = TestSet(
        "m", "p", "0", np.arange(100).astype(str), np.arange(100).astype(str), np.zeros(100), folds, (0,)
    )
    split_ratio = SplitReport.read(report).test_train_ratio()
    assert ratio_test_to_train(test_set, split_ratio) == pytest.approx(20 / 70)  # not 20 / 80
    assert ratio_test_to_train(test_set, None) == pytest.approx(20 / 70)  # without image counts: from the folds


def _videos(paths: dict, n: int) -> None:
    """Regroup the test images into n videos."""
    for pred_path in paths["predictions"]:
        table = pd.read_parquet(pred_path)
        table["group"] = [f"video{i % n}" for i in range(len(table))]
        table.to_parquet(pred_path)


def test_one_test_video_gives_no_intervals(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"], "weak": MODELS["weak"]})
    _videos(paths, 1)
    out = outputs(tmp_path, ["good", "weak"])
    doc = run_compare(paths, **out)
    assert doc["n_groups"] == 1 and doc["design_effect"] is None
    for row in doc["rows"]:
        assert all(row[f"{m}_ci"] is None for m in ("accuracy", "balanced_accuracy", "f1_macro", "video_accuracy"))
        assert row["auc_macro_ci"] is None and row["design_effect"] is None
    assert all(t["difference_ci"] is None for t in doc["pairwise"] + doc["vs_majority"])
    assert any("at least 4 test videos" in c and "Only 1 test video (" in c for c in doc["caveats"])
    assert not any("intervals are wide" in c for c in doc["caveats"])
    md = Path(out["md_path"]).read_text()
    assert "[n/a]" in md and "[0.8" not in md
    with open(out["csv_path"]) as fh:
        table = list(csv.DictReader(fh))
    assert table[0]["accuracy"] and table[0]["accuracy_ci_low"] == "" and table[0]["design_effect"] == ""
    assert "n/a" in Path(out["html_path"]).read_text()
    _videos(paths, 3)
    assert run_compare(paths, permutations=50)["rows"][0]["accuracy_ci"] is None
    _videos(paths, 4)  # clusterstats.MIN_GROUPS_FOR_INTERVALS
    doc = run_compare(paths, permutations=50)
    assert doc["rows"][0]["accuracy_ci"] is not None and doc["design_effect"] is not None


def test_pr_auc_is_null_when_no_class_has_both_positives_and_negatives(tmp_path):
    paths = make_run(tmp_path, {"good": MODELS["good"]})
    table = pd.read_parquet(paths["predictions"][0])
    table["true_label"] = 0  # every test image in one class
    table.to_parquet(paths["predictions"][0])
    metrics = json.loads(Path(paths["metrics"][0]).read_text())
    metrics["metrics"]["accuracy"] = float(np.mean(table["pred_label"] == 0))
    Path(paths["metrics"][0]).write_text(json.dumps(metrics))
    doc = run_compare(paths)
    assert all(r["auc_macro"] is None and r["pr_auc_macro"] is None for r in doc["rows"])
