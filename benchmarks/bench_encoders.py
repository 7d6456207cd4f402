"""Feature-extraction throughput of published-encoder backbones vs. the machine's matmul peak.

A ResNet50 (the timm / Lunit architecture, keras-hub ``ResNetBackbone``) and a ViT-B/16
(``ViTBackbone``) with random weights, saved as Keras presets and loaded through the workflow's own
path (``quiltflow.dag.encoders.fetch_encoder`` on the local folder, then
``quiltflow.models.published.encoder_backbone``: preprocessing + encoder + pooling, what rule
``extract_features`` runs). FLOPs: ResNet50 counted from its Conv2D/Dense layers
(``bench_train.forward_flops``); ViT-B/16 analytically (24 N D^2 + 4 N^2 D per block, + patch embedding).

    .venv/bin/python benchmarks/bench_encoders.py [--quick] [--batch-size 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_train import forward_flops, matmul_gflops  # noqa: E402
from quiltflow.dag.encoders import EncoderSpec, fetch_encoder  # noqa: E402
from quiltflow.models.published import encoder_backbone  # noqa: E402
from quiltflow.models.runtime import configure_runtime  # noqa: E402


def resnet50_preset(folder: Path) -> float:
    """A random ResNet50 v1.5 preset in ``folder``; its forward GFLOP per 224 px image."""
    from keras_hub.models import ResNetBackbone
    from keras_hub.src.utils.timm.convert_resnet import convert_backbone_config

    config = convert_backbone_config({"architecture": "resnet50"})
    ResNetBackbone(**config, image_shape=(224, 224, 3)).save_to_preset(str(folder))
    return 0.0  # counted from the built model's layers


def vit_b16_preset(folder: Path) -> float:
    """A random ViT-B/16 preset in ``folder``; its forward GFLOP per 224 px image (analytic)."""
    from keras_hub.models import ViTBackbone

    ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072
    ).save_to_preset(str(folder))
    tokens, width = 197, 768
    blocks = 12 * (24 * tokens * width**2 + 4 * tokens**2 * width)
    return (blocks + 2 * 196 * (16 * 16 * 3) * width) / 1e9


def feature_rate(info_path: Path, batch: int, batches: int, gflop: float) -> dict:
    model = encoder_backbone(str(info_path), 224)
    gflop = gflop or forward_flops(model) / 1e9
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8))

    @tf.function
    def features(images):
        return model(images, training=False)

    features(x).numpy()
    start = time.perf_counter()
    for _ in range(batches):
        features(x).numpy()
    images_per_s = batch * batches / (time.perf_counter() - start)
    return {
        "batch": batch,
        "feature_dim": int(model.output.shape[-1]),
        "images_per_s": images_per_s,
        "gflop_per_image": gflop,
        "gflops": images_per_s * gflop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run: checks the script works")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    _, runtime = configure_runtime(os.cpu_count())
    keras.utils.set_random_seed(0)
    gpus = tf.config.list_physical_devices("GPU")
    batch = args.batch_size or (4 if args.quick else (256 if gpus else 16))
    batches = 1 if args.quick else (20 if gpus else 4)
    peak = matmul_gflops(512 if args.quick else (8192 if gpus else 2048), 0.5 if args.quick else 3.0)
    results = {"device": runtime["device"], "matmul_gflops": peak}
    print(f"device: {runtime['device']}; float32 matmul: {peak:,.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("resnet50", resnet50_preset), ("vit_b16", vit_b16_preset)):
            folder = Path(tmp) / name
            gflop = make(folder)
            spec = EncoderSpec.from_config({"preset": str(folder)}, name)
            record = Path(tmp) / f"{name}_record" / "encoder_info.json"
            fetch_encoder(spec, Path(tmp) / "unused", record)
            r = feature_rate(record, batch, batches, gflop)
            r["pct_of_matmul"] = 100 * r["gflops"] / peak
            results[name] = r
            print(
                f"{name} features 224^2: {r['images_per_s']:,.1f} images/s x {r['gflop_per_image']:.1f} GFLOP"
                f" = {r['gflops']:,.1f} GFLOP/s ({r['pct_of_matmul']:.0f}% of matmul; batch {batch})"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
