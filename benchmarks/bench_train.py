"""Training throughput vs. the machine's matmul peak.

Measures, in one process:
  * float32 matmul GFLOP/s (the reference peak),
  * custom_cnn training images/s at 224^2 and 128^2 (model.fit on in-memory random uint8),
  * frozen ResNet50 feature pass images/s (what ``extract_features`` runs),
and converts images/s into achieved GFLOP/s using FLOPs counted analytically from the layers
(training step = 3 x forward: forward, input gradients, weight gradients).

    .venv/bin/python benchmarks/bench_train.py [--quick] [--json out.json] [--jit] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from quiltflow.models.builders import backbone, build_model  # noqa: E402
from quiltflow.models.runtime import configure_runtime  # noqa: E402


def forward_flops(model: keras.Model) -> float:
    """Multiply-adds x 2 of every Conv2D and Dense layer (nested models included), per image."""
    total = 0.0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2.0 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def matmul_gflops(n: int, seconds: float) -> float:
    """Sustained float32 matmul rate: the practical peak that conv kernels are judged against."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))

    @tf.function
    def mm(a, b):
        return tf.reduce_sum(tf.linalg.matmul(a, b))  # the reduce forces the result

    mm(a, b).numpy()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        mm(a, b).numpy()
        runs += 1
    return 2.0 * n**3 * runs / (time.perf_counter() - start) / 1e9


def cnn_train_rate(image_size: int, batch: int, steps: int, jit: bool) -> dict:
    keras.utils.set_random_seed(0)
    model = build_model("custom_cnn", 10, image_size, weights="none")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 4, image_size, image_size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, batch * 4).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    model.fit(ds, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)  # warm-up: tracing, kernel selection
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    images_per_s = batch * steps / seconds
    step_flops = 3 * forward_flops(model)
    return {
        "image_size": image_size,
        "batch": batch,
        "steps": steps,
        "jit_compile": jit,
        "images_per_s": images_per_s,
        "gflop_per_image": step_flops / 1e9,
        "gflops": images_per_s * step_flops / 1e9,
    }


def feature_rate(image_size: int, batch: int, batches: int) -> dict:
    model = backbone(image_size, "none", seed=0)
    x = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    x = tf.constant(x)

    @tf.function
    def features(images):
        return model(images, training=False)

    features(x).numpy()
    start = time.perf_counter()
    for _ in range(batches):
        features(x).numpy()
    images_per_s = batch * batches / (time.perf_counter() - start)
    flops = forward_flops(model)
    return {
        "image_size": image_size,
        "batch": batch,
        "images_per_s": images_per_s,
        "gflop_per_image": flops / 1e9,
        "gflops": images_per_s * flops / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run: checks the script works")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    # The training jobs' own setup (mixed precision on GPU, thread pools and determinism on CPU):
    # the benchmark measures what the workflow runs.
    _, runtime = configure_runtime(os.cpu_count())
    keras.utils.set_random_seed(0)  # determinism (CPU) requires seeded random ops
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{runtime['device']}, mixed precision {runtime['mixed_precision']}"
    batch = args.batch_size or (8 if args.quick else (256 if gpus else 32))
    steps = 2 if args.quick else (50 if gpus else 10)
    print(f"device: {device}")

    peak = matmul_gflops(512 if args.quick else (8192 if gpus else 2048), 0.5 if args.quick else 3.0)
    print(f"float32 matmul: {peak:,.1f} GFLOP/s")
    results = {"device": device, "matmul_gflops": peak, "custom_cnn_train": [], "resnet50_features": None}
    for size in (224, 128):
        r = cnn_train_rate(size, batch, steps, args.jit)
        r["pct_of_matmul"] = 100 * r["gflops"] / peak
        results["custom_cnn_train"].append(r)
        print(
            f"custom_cnn train {size}^2: {r['images_per_s']:,.1f} images/s x {r['gflop_per_image']:.2f} GFLOP"
            f" = {r['gflops']:,.1f} GFLOP/s ({r['pct_of_matmul']:.0f}% of matmul; batch {batch}, jit {args.jit})"
        )
    r = feature_rate(224, batch, 2 if args.quick else 10)
    r["pct_of_matmul"] = 100 * r["gflops"] / peak
    results["resnet50_features"] = r
    print(
        f"resnet50 frozen feature pass 224^2: {r['images_per_s']:,.1f} images/s x {r['gflop_per_image']:.2f} GFLOP"
        f" = {r['gflops']:,.1f} GFLOP/s ({r['pct_of_matmul']:.0f}% of matmul)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
