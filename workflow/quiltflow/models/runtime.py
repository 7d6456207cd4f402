"""Device and thread setup shared by training, feature extraction, evaluation and the benchmarks.

One place decides how a TensorFlow job runs: GPU -> mixed precision (+ MirroredStrategy for more
than one GPU); CPU -> Snakemake's ``threads`` as intra-op threads and deterministic kernels.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import keras
import tensorflow as tf

log = logging.getLogger("quiltflow.models.runtime")


def set_thread_pools(threads: int | None) -> None:
    """Size TensorFlow's thread pools (honours Snakemake's ``threads``); must precede any TF op."""
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, int(threads)))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
    except RuntimeError:  # TF already initialised in this process (tests): keep its pools
        log.debug("thread pools already fixed at %s", tf.config.threading.get_intra_op_parallelism_threads())


def configure_runtime(threads: int | None = None) -> tuple[tf.distribute.Strategy, dict[str, Any]]:
    """Pick device settings for training; returns (distribution strategy, device facts)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
        return strategy, {
            "device": f"GPU x{len(gpus)}: {', '.join(sorted(set(names)))}",
            "mixed_precision": True,
            "deterministic": False,  # cuDNN autotuning is faster and not bit-reproducible
        }
    keras.mixed_precision.set_global_policy("float32")
    set_thread_pools(threads)
    # Same seed -> same history on CPU: forbid the nondeterministic kernels.
    tf.config.experimental.enable_op_determinism()
    intra = tf.config.threading.get_intra_op_parallelism_threads() or "all"
    return tf.distribute.get_strategy(), {
        "device": f"CPU ({intra} threads)",
        "mixed_precision": False,
        "deterministic": True,
    }


@contextlib.contextmanager
def float32_policy():
    """Build the saved model in float32 so it runs anywhere (CPU float16 kernels are slow)."""
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)
