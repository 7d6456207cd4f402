"""Prediction on new images (issue 17): the same probabilities as evaluation, bad files listed
with their reason, folder/CSV/Parquet inputs, one-line errors, and `snakemake predict`."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map
from quiltflow.core.settings import ShardSettings, schema_default
from quiltflow.dag.config import DEMO_IMAGES
from quiltflow.data.images import MAX_PIXELS
from quiltflow.data.shards import write_shard
from quiltflow.evaluation.predict import list_images, predict_paths, results_dir_of, run_shard_settings
from quiltflow.records.shard_index import write_index
from support import make_bad_files
from workflow_runner import clone_run, copy_workflow, planned_jobs, rules_of, snakemake

MODELS = ["custom_cnn", "resnet50_frozen", "resnet50_finetune"]
ATOL = 1e-5


def evaluated(run: Path, model: str) -> pd.DataFrame:
    """evaluate_model's per-image probabilities of the finished run's test images."""
    return pd.read_parquet(run / f"results/predictions/{model}.parquet")


def some_test_images(run: Path, n: int | None = None) -> list[Path]:
    ids = evaluated(run, "custom_cnn")["image_id"].tolist()[:n]
    return [run / DEMO_IMAGES / i for i in ids]


def prob_columns(table: pd.DataFrame) -> np.ndarray:
    return table[[c for c in table.columns if c.startswith("prob_")]].to_numpy(np.float64)


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
    }


# --- the same probabilities as evaluate_model -------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_test_images_get_evaluate_models_probabilities(finished_run, model):
    expected = evaluated(finished_run, model)
    paths = [finished_run / DEMO_IMAGES / i for i in expected["image_id"]]
    # batch_size 5: several batches, none the size evaluation used.
    table = predict_paths(finished_run / f"results/models/{model}/model.keras", paths, batch_size=5)
    assert table["path"].tolist() == [str(p) for p in paths]
    assert (table["status"] == "ok").all()
    got = prob_columns(table)
    want = np.stack(expected["probabilities"].to_numpy()).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    classes = read_label_map(finished_run / "results/splits/label_map.json")
    assert [c.removeprefix("prob_") for c in table.columns if c.startswith("prob_")] == classes
    assert table["pred_index"].tolist() == expected["pred_label"].tolist()
    assert table["pred_label"].tolist() == [classes[i] for i in expected["pred_label"]]
    np.testing.assert_allclose(table["pred_prob"], want.max(axis=1), atol=ATOL)


def test_settings_are_read_from_the_run(finished_run):
    results = results_dir_of(finished_run / "results/models/custom_cnn/model.keras")
    assert results == (finished_run / "results").resolve()
    settings = run_shard_settings(finished_run / "results/models/custom_cnn/model.keras")
    config = yaml.safe_load((finished_run / "config/test.yaml").read_text())
    assert (settings.image_size, settings.framing) == (config["image_size"], "center_crop")
    assert settings.jpeg_quality == schema_default("tfrecords", "jpeg_quality")


@pytest.mark.parametrize(("framing", "grid_size"), [("grid", 2), ("grid", 3), ("pad", 2)])
def test_other_framings_match_evaluation(finished_run, tmp_path, framing, grid_size):
    """Shards written with another framing, evaluated as evaluate_model does (grid: cells
    averaged per source image), against predict_paths with the same settings."""
    import keras
    import quiltflow.models.builders  # noqa: F401
    from quiltflow.evaluation.evaluate import predict
    from quiltflow.models.pipeline import make_dataset

    run = finished_run
    settings = ShardSettings.from_config({"framing": framing, "grid_size": grid_size}, image_size=32)
    shard, report = tmp_path / "test-00000-of-00001.tfrecord", tmp_path / "test-00000-of-00001.report.json"
    write_shard(run / "results/splits/test.parquet", run / DEMO_IMAGES, 0, 1, settings, shard, report)
    classes = read_label_map(run / "results/splits/label_map.json")
    write_index("test", 32, len(classes), [shard], [report], tmp_path / "test.index.json")
    model_path = run / "results/models/custom_cnn/model.keras"
    model = keras.models.load_model(model_path, compile=False)
    dataset = make_dataset(tmp_path / "test.index.json", 64, training=False, with_ids=True)
    expected = predict(model, dataset, classes, records_per_image=settings.records_per_image)

    paths = [run / DEMO_IMAGES / i for i in expected["image_id"]]
    table = predict_paths(model_path, paths, settings=settings, class_names=classes, batch_size=7)
    assert (table["status"] == "ok").all()
    want = np.stack(expected["probabilities"].to_numpy()).astype(np.float64)
    np.testing.assert_allclose(prob_columns(table), want, rtol=0, atol=ATOL)


# --- bad files -----------------------------------------------------------------------------------


def test_bad_files_are_listed_with_their_reason_and_the_others_predicted(finished_run, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    expected = {k: v for k, v in make_bad_files(folder).items() if (folder / k).is_file()}
    good = some_test_images(finished_run, 4)
    for k, path in enumerate(good):
        shutil.copy(path, folder / f"good{k}{path.suffix}")
    (folder / "NOTES.txt").write_text("not listed: no image extension\n")
    before = fingerprint(folder)
    listed = list_images(folder)
    assert len(listed) == len(good) + len(expected)  # every image file, broken or not
    model = finished_run / "results/models/custom_cnn/model.keras"
    table = predict_paths(model, listed, batch_size=3, threads=2).set_index("path")
    for name, reason in expected.items():
        assert table.loc[str(folder / name), "status"] == reason, name
        assert table.loc[str(folder / name), "detail"]
        assert pd.isna(table.loc[str(folder / name), "pred_label"])
        assert np.isnan(table.loc[str(folder / name), "pred_prob"])
    alone = predict_paths(model, good).set_index("path")
    ok = table[table["status"] == "ok"]
    assert len(ok) == len(good)
    np.testing.assert_allclose(prob_columns(ok), prob_columns(alone), rtol=0, atol=ATOL)
    assert ok["pred_label"].tolist() == alone["pred_label"].tolist()
    assert fingerprint(folder) == before  # only ever read


def test_too_large_follows_max_pixels(finished_run, tmp_path):
    path = some_test_images(finished_run, 1)[0]
    model = finished_run / "results/models/custom_cnn/model.keras"
    table = predict_paths(model, [path], max_pixels=100)
    assert table["status"].tolist() == ["decompression_bomb"]
    assert schema_default("predict", "max_image_pixels") == MAX_PIXELS


# --- inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_input_keeps_rows_and_order(finished_run, tmp_path, kind):
    images = tmp_path / "images"
    images.mkdir()
    good = some_test_images(finished_run, 3)
    for path in good:
        shutil.copy(path, images / path.name)
    rows = [
        f"images/{good[2].name}",
        "images/missing.jpg",
        str(images / good[0].name),
        "images",
        "",
        f"images/{good[2].name}",
    ]
    table_path = tmp_path / f"list.{kind}"
    frame = pd.DataFrame({"path": rows, "note": range(len(rows))})
    frame.to_csv(table_path, index=False) if kind == "csv" else frame.to_parquet(table_path)
    listed = list_images(table_path)
    assert listed[0] == str(tmp_path / rows[0]) and listed[2] == rows[2] and listed[4] == ""
    table = predict_paths(finished_run / "results/models/custom_cnn/model.keras", listed)
    assert table["status"].tolist() == ["ok", "missing", "ok", "not_a_file", "missing", "ok"]
    assert table.loc[0, "pred_prob"] == table.loc[5, "pred_prob"]


def test_folder_is_searched_recursively(tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    for name in ["a/b/x.JPG", "a/y.png", "z.tif", "a/readme.md", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path) == [str(tmp_path / n) for n in ["a/b/x.JPG", "a/y.png", "z.tif"]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope", r"^predict.images: .*nope does not exist"),
        (lambda p: (p / "list.csv").write_text("file,label\na.jpg,x\n") and p / "list.csv", r"has no column 'path'"),
        (
            lambda p: (p / "list.txt").write_text("a.jpg\n") and p / "list.txt",
            r"neither a folder nor a \.csv/\.parquet",
        ),
        (lambda p: (p / "bad.parquet").write_bytes(b"not parquet") and p / "bad.parquet", r"cannot read .*bad.parquet"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message) as err:
        list_images(make(tmp_path))
    assert "\n" not in str(err.value)


def test_model_outside_a_run_needs_settings(tmp_path):
    with pytest.raises(UserError, match="not inside a run's results/models/ folder") as err:
        predict_paths(tmp_path / "model.keras", [])
    assert "\n" not in str(err.value)


# --- snakemake predict -------------------------------------------------------------------------


def predict_config(folder: Path, **predict) -> str:
    """A config file with a predict section, written outside the run (an absolute path)."""
    path = folder / "predict.yaml"
    path.write_text(yaml.safe_dump({"predict": predict}))
    return str(path)


@pytest.mark.e2e
@pytest.mark.slow
def test_snakemake_predict_writes_both_tables(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    images = tmp_path / "my images"
    images.mkdir()
    good = some_test_images(finished_run, 5)
    for path in good:
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    before = fingerprint(images)
    configs = ("config/test.yaml", predict_config(tmp_path, images=str(images), models=["custom_cnn"]))
    assert planned_jobs(workdir, "predict", configfiles=configs) == {"predict_images[model=custom_cnn]", "predict"}
    snakemake(workdir, "predict", configfiles=configs)
    parquet = pd.read_parquet(workdir / "results/predict/custom_cnn.parquet")
    csv = pd.read_csv(workdir / "results/predict/custom_cnn.csv")
    assert len(parquet) == len(csv) == len(good) + 1
    assert parquet["path"].tolist() == csv["path"].tolist() == sorted(str(p) for p in images.iterdir())
    status = dict(zip((Path(p).name for p in parquet["path"]), parquet["status"]))
    assert status.pop("broken.jpg") == "corrupt" and set(status.values()) == {"ok"}
    np.testing.assert_allclose(prob_columns(csv), prob_columns(parquet), atol=1e-6)
    direct = predict_paths(workdir / "results/models/custom_cnn/model.keras", parquet["path"].tolist())
    np.testing.assert_allclose(prob_columns(parquet), prob_columns(direct), atol=ATOL)
    log = (workdir / "logs/predict_images/custom_cnn.log").read_text()
    assert "predicted 6/6 images" in log and "{'corrupt': 1}" in log
    assert fingerprint(images) == before
    assert not planned_jobs(workdir, configfiles=configs), "predict changed the default run"


@pytest.mark.e2e
def test_predict_plans_every_model_by_default(finished_run, tmp_path):
    configs = ("config/test.yaml", predict_config(tmp_path, images=str(tmp_path)))
    jobs = planned_jobs(finished_run, "predict", configfiles=configs)
    assert jobs == {f"predict_images[model={m}]" for m in MODELS} | {"predict"}
    assert "predict_images" not in rules_of(planned_jobs(finished_run, configfiles=configs))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("predict", "message"),
    [
        ({}, "snakemake predict: config key predict.images is not set"),
        ({"images": "no/such/folder"}, "config key predict.images: no/such/folder does not exist"),
        ({"images": ".", "models": ["vgg"]}, "config key predict.models: 'vgg' is not a model of this config"),
    ],
)
def test_predict_config_errors_are_one_line(tmp_path, predict, message):
    workdir = copy_workflow(tmp_path / "run")
    configs = ("config/test.yaml", predict_config(tmp_path, **predict))
    proc = snakemake(workdir, "predict", "--dry-run", configfiles=configs, check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if message in line]
    assert lines, proc.stderr[-3000:]
