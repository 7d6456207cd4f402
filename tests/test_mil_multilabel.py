"""Multi-label bag models end to end (issue 27): abmil beside the frame models of the shared
multi-label run (2 folds by video), through compare_videos, and `snakemake predict` of the bag model
on a folder of video sub-folders (a frame model on the same folder keeps one row per image).

The shared run (conftest: multilabel_cv_run) is cloned and an abmil on random-ResNet50 features
added, so only its jobs run (features, 2 trainings, evaluations) besides the comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from quiltflow.core import paths
from quiltflow.core.cv import run_buckets
from quiltflow.core.paths import fill
from quiltflow.core.tasks import MULTILABEL
from support import MULTILABEL_CONFIGS
from workflow_runner import clone_run, snakemake

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BAG, TOP = "abmil", 2
ABMIL = {"architecture": "abmil", "weights": "none", "epochs": 2, "batch_size": 4, "max_frames": 8, "embed_dim": 32}
ABMIL["attention_dim"] = 16
VIDEOS = 3  # test videos of fold 0 copied into the prediction folder


def _videos_folder(workdir: Path, root: Path) -> list[str]:
    """``VIDEOS`` test videos of fold 0 as sub-folders (their frames copied), one unreadable frame in
    the first, an empty video folder and an image outside any video; returns the videos."""
    manifest = pd.concat([pd.read_parquet(workdir / fill(paths.MANIFEST, split=b)) for b in run_buckets(0, 2)["test"]])
    chosen = sorted(manifest["group"].unique())[:VIDEOS]
    for _, row in manifest[manifest["group"].isin(chosen)].iterrows():
        source = workdir / "resources/demo/images" / row["image_id"]
        if _readable(source):  # the demo's planted broken files: the shards skipped them too
            (root / row["group"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / row["group"] / source.name)
    (root / chosen[0] / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "empty_video").mkdir()
    Image.new("RGB", (40, 40), (200, 120, 180)).save(root / "loose.jpg")
    return chosen


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def bag_run(multilabel_cv_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mil_multilabel")
    workdir = clone_run(multilabel_cv_run, tmp / "run")  # the shared run stays as it is
    videos = _videos_folder(workdir, tmp / "new videos")
    extra = tmp / "abmil.yaml"
    predict = {"images": str(tmp / "new videos"), "models": [BAG, "custom_cnn"], "top_frames": TOP}
    extra.write_text(yaml.safe_dump({"models": {BAG: ABMIL}, "predict": predict}))
    configs = (*MULTILABEL_CONFIGS, str(extra))
    snakemake(workdir, fill(paths.COMPARISON_VIDEO, ext="json"), "predict", configfiles=configs, timeout=1200)
    return workdir, tmp / "new videos", videos


def test_compare_videos_scores_multilabel_frame_and_bag_models_by_video(bag_run):
    workdir, _, _ = bag_run
    document = json.loads((workdir / fill(paths.COMPARISON_VIDEO, ext="json")).read_text())
    folds = pd.read_parquet(workdir / paths.FOLDS_TABLE)
    assert document["task"] == MULTILABEL and document["unit"] == "video"
    assert document["n_test"] == document["n_groups"] == folds["group"].nunique() and document["folds"] == 2
    rows = {row["name"]: row for row in document["rows"]}
    units = {name: row["unit"] for name, row in rows.items() if row["unit"]}
    assert units == {BAG: "video", "custom_cnn": "image", "resnet50_frozen": "image", "resnet50_finetune": "image"}
    assert {"label_frequency_baseline", "ensemble"} <= set(rows)
    for name in units:
        low, high = rows[name]["map_macro_ci"]
        assert 0 <= low <= rows[name]["map_macro"] <= high <= 1
        assert rows[name]["map_macro_fold_sd"] is not None  # 2 folds: the spread over runs
    assert rows["label_frequency_baseline"]["auc_macro"] == pytest.approx(0.5)
    tests = [t for t in document["pairwise"] if BAG in (t["a"], t["b"])]
    assert {t["metric"] for t in tests} == {"map_macro", "auc_macro"}
    assert all(0 < t["p_value"] <= 1 for t in tests)
    classes = document["class_names"]
    assert set(document["per_label"]["ap"][BAG]) == set(classes)
    # The bag model's video rows are its pooled predictions, one per test video.
    bag = pd.read_parquet(workdir / fill(paths.PREDICTIONS, model=BAG, run="", variant=""))
    assert len(bag) == document["n_test"] and np.stack(bag["true_multi_hot"]).shape == (len(bag), len(classes))
    assert "## Unit each model was trained at" in (workdir / fill(paths.COMPARISON_VIDEO, ext="md")).read_text()


def test_predict_gives_one_row_per_video_with_its_top_frames(bag_run):
    workdir, root, videos = bag_run
    table = pd.read_parquet(workdir / fill(paths.PREDICT, model=BAG, ext="parquet"))
    frames = pd.read_parquet(workdir / fill(paths.PREDICT_ATTENTION, model=BAG))
    assert table["group"].tolist() == sorted([*videos, "empty_video"])
    ok = table[table["status"] == "ok"]
    assert ok["group"].tolist() == videos and table.set_index("group").loc["empty_video", "status"] == "empty"
    listed = {v: len([p for p in (root / v).iterdir()]) for v in videos}
    assert ok.set_index("group")["n_frames"].to_dict() == listed
    assert ok.set_index("group")["n_skipped"].to_dict() == {v: int(v == videos[0]) for v in videos}
    # Counts reconcile: every listed image once in the frame table, with its status.
    assert len(frames) == sum(listed.values()) + 1
    assert frames["status"].value_counts().to_dict() == {
        "ok": sum(listed.values()) - 1,
        "not_an_image": 1,
        "no_video": 1,
    }
    sums = frames[frames["status"] == "ok"].groupby("group")["attention"].sum()
    assert np.allclose(sums.to_numpy(), 1, atol=1e-4)
    classes = json.loads((workdir / paths.LABEL_MAP).read_text())["classes"]
    thresholds = np.mean(
        [
            [json.loads(p.read_text())["thresholds"][c] for c in classes]
            for p in sorted((workdir / "results/models" / BAG).glob("fold*/train_info.json"))
        ],
        axis=0,
    )
    probs = ok[[f"prob_{c}" for c in classes]].to_numpy()
    assert ok["pred_labels"].tolist() == ["|".join(c for c, on in zip(classes, r >= thresholds) if on) for r in probs]
    for _, row in ok.iterrows():
        top = json.loads(row["top_frames"])
        mine = frames[(frames["group"] == row["group"]) & (frames["status"] == "ok")]
        assert len(top) == TOP and [t["path"] for t in top] == mine.nlargest(TOP, "attention")["path"].tolist()
        assert all(Path(t["path"]).parent.name == row["group"] for t in top)
    # A frame model on the same folder: one row per image, as before.
    images = pd.read_parquet(workdir / fill(paths.PREDICT, model="custom_cnn", ext="parquet"))
    assert len(images) == len(frames) and (images["status"] == "ok").sum() == len(frames) - 1


def test_a_runs_video_prediction_is_the_one_evaluate_bag_model_gave(bag_run, monkeypatch):
    """The features are computed anew from the image files: the fold-0 run gives each of its test
    videos the probabilities and attention evaluate_bag_model gave it from the cached features;
    `snakemake predict` averages the runs."""
    from quiltflow.evaluation.predict_videos import list_videos, predict_video_paths

    workdir, root, videos = bag_run
    monkeypatch.chdir(workdir)
    listing = list_videos(root)
    per_run = {}
    for run in ("fold0-seed42", "fold1-seed42"):
        model = workdir / "results/models" / BAG / run / "model.keras"
        seed = json.loads(model.with_name("train_info.json").read_text())["seed"]  # config.seed: seeds unset
        per_run[run] = predict_video_paths(model, listing, seed=seed, top_k=TOP)
    classes = json.loads((workdir / paths.LABEL_MAP).read_text())["classes"]
    columns = [f"prob_{c}" for c in classes]
    evaluated = pd.read_parquet(workdir / "results/predictions" / BAG / "fold0-seed42.parquet").set_index("group")
    mine = per_run["fold0-seed42"][0].set_index("group").loc[videos]
    assert np.allclose(mine[columns].to_numpy(), np.stack(evaluated.loc[videos, "probabilities"]), atol=1e-4)
    attention = pd.read_parquet(workdir / "results/attention" / BAG / "fold0-seed42.parquet")
    by_name = dict(zip(attention["image_id"].map(lambda i: Path(i).name), attention["attention"]))
    frames = per_run["fold0-seed42"][1]
    ok = frames[frames["status"] == "ok"]
    assert np.allclose(ok["attention"], [by_name[Path(p).name] for p in ok["path"]], atol=1e-4)
    table = pd.read_parquet(workdir / fill(paths.PREDICT, model=BAG, ext="parquet")).set_index("group").loc[videos]
    mean = np.mean([r[0].set_index("group").loc[videos, columns].to_numpy() for r in per_run.values()], axis=0)
    assert np.allclose(table[columns].to_numpy(), mean, atol=1e-5)
