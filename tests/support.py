"""Helpers shared by several test modules (test modules never import each other): the configs of
the shared runs (conftest.py makes the runs), Quilt-format lookups, image files of every broken kind, and a comparison run written from known predictions.

Runs of the real workflow (snakemake in a workflow copy, dry runs, clones) live in
workflow_runner.py; the shared finished runs are the session fixtures of conftest.py."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from quiltflow.data.demo import LOOKUP_COLUMNS

# --- the shared runs of conftest.py: their configs and targets ---------------------------------

# config/test.yaml alone: the demo, 3 models, the one train/val/test split.
FINISHED_CONFIGS = ("config/test.yaml",)
# Cross-validation by video: 3 folds x 2 seeds (config/cv_test.yaml).
CV_CONFIGS = ("config/test.yaml", "config/cv_test.yaml")
# The models a CV run trains (its targets): the image CNN and the frozen backbone (its features are
# cached per bucket); every TF job holds the one "gpu", so each model costs 12 jobs here.
CV_MODELS = ("custom_cnn", "resnet50_frozen")
# Multi-label targets with 2-fold cross-validation by video.
MULTILABEL_CONFIGS = ("config/test.yaml", "config/multilabel_test.yaml", "config/two_folds_test.yaml")
# Pretraining by fold: 2 folds, one SimCLR job per fold (config/pretrain_test.yaml), and a 1-epoch
# custom_cnn beside it (config/pretrain_folds_test.yaml). Its own run, not the multi-label one: the
# two together made one snakemake call of 11-15 min on this machine, over workflow_runner's
# 900-s limit, and saved only the data stages and custom_cnn's 4 jobs.
PRETRAIN_CONFIGS = ("config/test.yaml", "config/pretrain_test.yaml", "config/pretrain_folds_test.yaml")
# The pretrained model, and one that a pretraining change must not rerun.
PRETRAIN_MODELS = ("resnet50_ssl", "custom_cnn")


def metrics_targets(models) -> tuple[str, ...]:
    return tuple(f"results/metrics/{model}.json" for model in models)


# --- Quilt-format lookups (test_metadata, test_multilabel) -------------------------------------

COLUMNS = list(LOOKUP_COLUMNS)


def vid_name(vid: str, n: int) -> str:
    return f"{vid}_image_{n:08d}-0000-4000-8000-000000000000.jpg"


def write_lookup(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    """A Quilt-format lookup with sensible defaults for every column not given."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for i, r in enumerate(rows):
            full = {
                "Unnamed: 0": i,
                "caption": f"caption {i}, with a comma",
                "subset": "quilt",
                "split": "train",
                "pathology": "['Renal']",
                "magnification": 1,
                "height": 512.0,
                "width": 512.0,
                "not_histology": 0,
                "single_wsi": 1,
                **r,
            }
            w.writerow(full)
    return path


def touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


# --- image files (test_shards, test_predict) ---------------------------------------------------


def he_like(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth pink/purple RGB texture (JPEG-friendly, unlike white noise)."""
    rng = np.random.default_rng(seed)
    cell = max(4, min(w, h) // 6)  # features stay a few output pixels wide at any scale
    low = rng.random((max(2, h // cell), max(2, w // cell), 3))
    img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR))
    tint = np.array([0.85, 0.55, 0.8])
    return (img * tint + 30).clip(0, 255).astype(np.uint8)


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def make_bad_files(root: Path) -> dict[str, str]:
    """One file of each broken kind; returns {image_id: expected reason}."""
    good = io.BytesIO()
    Image.fromarray(he_like(120, 90, seed=7)).save(good, "JPEG", quality=90)
    jpg = good.getvalue()
    png = io.BytesIO()
    Image.fromarray(he_like(120, 90, seed=7)).save(png, "PNG")
    corrupt = bytearray(png.getvalue())
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 4 : idat + 12] = b"\xff" * 8  # the zlib header inside IDAT breaks
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad/corrupt.png").write_bytes(bytes(corrupt))
    (root / "bad/truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/notes.jpg").write_text("this is a caption file, not an image\n" * 5)
    png_with_size(root / "bad/bomb.png", 20_000, 20_000)  # > 2 x MAX_PIXELS: PIL refuses
    png_with_size(root / "bad/bomb_warn.png", 8_000, 8_000)  # > MAX_PIXELS: PIL only warns
    (root / "bad/a_directory.jpg").mkdir(exist_ok=True)
    return {
        "bad/corrupt.png": "corrupt",
        "bad/truncated.jpg": "truncated",
        "bad/empty.jpg": "zero_byte",
        "bad/notes.jpg": "not_an_image",
        "bad/bomb.png": "decompression_bomb",
        "bad/bomb_warn.png": "decompression_bomb",
        "bad/missing.jpg": "missing",
        "bad/a_directory.jpg": "not_a_file",
    }


# --- a comparison run from known predictions (test_tta; test_compare has its own copy) ----------

COMPARE_CLASSES = ["adeno", "benign", "squamous"]
COMPARE_TRAIN_COUNTS = {"adeno": 500, "benign": 300, "squamous": 200}


def _compare_y_true() -> np.ndarray:
    return np.repeat([0, 1, 2], [150, 90, 60])  # 300 test images, majority class first


def accurate_predictions(fraction: float, seed: int) -> np.ndarray:
    """Predictions right on a given fraction of images (wrong ones shifted to the next class)."""
    y_true = _compare_y_true()
    wrong = np.random.default_rng(seed).random(len(y_true)) >= fraction
    return np.where(wrong, (y_true + 1) % 3, y_true)


def make_compare_run(tmp_path: Path, models: dict[str, np.ndarray], ids: dict[str, list[str]] | None = None) -> dict:
    """Write label map, split report, and per-model metrics JSON, predictions Parquet, history CSV
    (the inputs of compare_models) for models given as predicted class indices; ``ids`` gives a
    model other image ids (a misaligned test set)."""
    from quiltflow.core.jsonio import sha256_file, write_json
    from quiltflow.evaluation.metrics import compute_metrics
    from quiltflow.records.metrics_document import build_metrics_document
    from quiltflow.records.predictions import write_predictions

    manifest = tmp_path / "splits" / "test.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(b"test manifest stand-in")
    classes = COMPARE_CLASSES
    (tmp_path / "splits" / "label_map.json").write_text(
        json.dumps({"classes": classes, "class_to_index": {c: i for i, c in enumerate(classes)}})
    )
    (tmp_path / "splits" / "split_report.json").write_text(
        json.dumps({"seed": 1, "counts": {"train": 1000}, "class_counts": {"train": COMPARE_TRAIN_COUNTS}})
    )
    y_true = _compare_y_true()
    paths: dict[str, list[str]] = {"metrics": [], "predictions": [], "histories": []}
    for name, y_pred in models.items():
        probs = np.full((len(y_true), 3), 0.1, np.float32)
        probs[np.arange(len(y_true)), y_pred] = 0.8
        table = pd.DataFrame(
            {
                "image_id": (ids or {}).get(name) or [f"img{i:04d}.jpg" for i in range(len(y_true))],
                "group": [f"video{i // 10}" for i in range(len(y_true))],
                "true_label": y_true.astype(np.int32),
                "pred_label": y_pred.astype(np.int32),
                "probabilities": list(probs),
            }
        )
        pred_path = tmp_path / "predictions" / f"{name}.parquet"
        write_predictions(table, pred_path)
        doc = build_metrics_document(
            model=name,
            architecture="custom_cnn",
            weights="none",
            dataset_sha256=sha256_file(manifest),
            train_seconds=3.0,
            eval_seconds=0.5,
            metrics=compute_metrics(table, classes, top_k=2),
            test_manifest=str(manifest),
        )
        metrics_path = tmp_path / "metrics" / f"{name}.json"
        write_json(doc, metrics_path)
        history = tmp_path / "models" / name / "history.csv"
        history.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "epoch": [0, 1, 2],
                "accuracy": [0.5, 0.6, 0.7],
                "loss": [1.0, 0.8, 0.6],
                "val_accuracy": [0.45, 0.55, 0.6],
                "val_loss": [1.1, 0.9, 0.85],
            }
        ).to_csv(history, index=False)
        paths["metrics"].append(str(metrics_path))
        paths["predictions"].append(str(pred_path))
        paths["histories"].append(str(history))
    paths["split_report"] = str(tmp_path / "splits" / "split_report.json")
    paths["label_map"] = str(tmp_path / "splits" / "label_map.json")
    return paths
