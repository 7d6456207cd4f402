"""Benchmark prediction on new images against the evaluation path, same model, same run.

    .venv/bin/python benchmarks/bench_predict.py --run DIR [--model custom_cnn] [--n 256] [--repeats 3]

``DIR`` is a finished run (the project root after ``make demo``, or a copy of a test run): its
``results/models/{model}/model.keras`` and ``results/tfrecords/test.index.json`` are used.

  predict    ``quiltflow.evaluation.predict.predict_paths`` on ``--n`` raw 512x512 JPEGs (H&E-like, made in a
             temporary folder): decode, framing + resize, JPEG round trip at the shard quality,
             ``tf.io.decode_jpeg``, batched model. The model is loaded once per call (its load
             time is measured apart and shown; "steady" leaves it out).
  evaluate   the evaluation path on the run's shards (every bucket, repeated to ``--n`` images):
             ``data.make_dataset`` (tf.data over the TFRecords, with ids) + ``predict_on_batch``
             per batch as ``evaluate.predict`` calls it; model loaded once.

Both sides run alternately ``--repeats`` times; the medians are printed in images/s (a grid
image counts once). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "workflow"))
sys.path.insert(0, str(HERE))

from bench_shards import he_like  # noqa: E402
from quiltflow.core.jsonio import read_json, read_label_map  # noqa: E402
from quiltflow.evaluation.predict import load_models, predict_paths, run_shard_settings  # noqa: E402


def make_jpegs(folder: Path, n: int, side: int = 512) -> list[str]:
    """``n`` raw side x side JPEGs (quality 90), a few textures rolled so no two files are equal."""
    import numpy as np

    base = [he_like(side, seed) for seed in range(min(n, 8))]
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.roll(base[i % len(base)], (i * 37) % side, axis=1)).save(path, "JPEG", quality=90)
        paths.append(str(path))
    return paths


def time_predict(model_path: Path, paths: list[str], settings, classes, batch_size: int, threads: int) -> float:
    start = time.perf_counter()
    table = predict_paths(
        model_path, paths, settings=settings, class_names=classes, batch_size=batch_size, threads=threads
    )
    seconds = time.perf_counter() - start
    assert (table["status"] == "ok").all(), table["status"].value_counts()
    return seconds


def time_evaluate(model, indexes: list[Path], batch_size: int, images: int) -> float:
    """Seconds the evaluation path takes for ``images`` images: tf.data over the run's shards
    (``data.make_dataset`` with ids, as evaluate_model reads them, repeated to enough records)
    and ``model.predict_on_batch`` per batch, as ``evaluate.predict`` calls it."""
    import tensorflow as tf
    from quiltflow.models.pipeline import make_dataset, num_examples

    per_image = int(read_json(indexes[0], "index").get("records_per_image", 1))
    records = images * per_image
    dataset = make_dataset(indexes, batch_size, training=False, with_ids=True)
    dataset = dataset.repeat(math.ceil(records / num_examples(indexes))).unbatch().take(records).batch(batch_size)
    start = time.perf_counter()
    for batch_images, _labels, _ids in dataset.prefetch(tf.data.AUTOTUNE):
        model.predict_on_batch(batch_images)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=HERE.parents[0])
    parser.add_argument("--model", default="custom_cnn")
    parser.add_argument("--n", type=int, default=256, help="raw 512x512 JPEGs to predict")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from quiltflow.models.runtime import set_thread_pools

    set_thread_pools(args.threads)
    results = args.run / "results"
    model_path = results / "models" / args.model / "model.keras"
    indexes = sorted((results / "tfrecords").glob("*.index.json"))  # every bucket: more records per pass
    settings = run_shard_settings(model_path)
    classes = read_label_map(results / "splits" / "label_map.json")
    t0 = time.perf_counter()
    model = load_models(model_path)[0]
    load_seconds = time.perf_counter() - t0

    rows = {"predict": [], "predict_steady": [], "evaluate": []}
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(Path(folder), args.n)
        time_predict(model_path, paths[:8], settings, classes, args.batch_size, args.threads)  # warm-up
        time_evaluate(model, indexes, args.batch_size, 8)
        for _ in range(args.repeats):
            seconds = time_predict(model_path, paths, settings, classes, args.batch_size, args.threads)
            rows["predict"].append(args.n / seconds)
            rows["predict_steady"].append(args.n / max(seconds - load_seconds, 1e-9))
            rows["evaluate"].append(args.n / time_evaluate(model, indexes, args.batch_size, args.n))

    report = {
        "model": args.model,
        "image_size": settings.image_size,
        "framing": settings.framing,
        "n_raw_jpegs": args.n,
        "threads": args.threads,
        "model_load_seconds": round(load_seconds, 3),
        **{f"{k}_img_per_s_median": round(statistics.median(v), 1) for k, v in rows.items()},
        "rounds": {k: [round(x, 1) for x in v] for k, v in rows.items()},
    }
    report["evaluate_over_predict"] = round(report["evaluate_img_per_s_median"] / report["predict_img_per_s_median"], 2)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
