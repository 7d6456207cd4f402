"""SimCLR pretraining of a registry backbone (Chen et al. 2020): two views per image, NT-Xent.

``pretrain_simclr`` is what rule ``pretrain_encoder`` runs (through ``quiltflow.models.encoders``).
``out_dir`` receives ``backbone.weights.h5`` (the bare base's ``save_weights``: what
``models.backbone(weights=<file>)`` loads) and ``history.csv`` (epoch, loss, learning_rate).
Rerunning after a kill resumes from the last finished epoch (``backup/``, removed at the end).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from quiltflow.core.architectures import backbone_spec
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import sha256_file
from quiltflow.models.builders import backbone_base
from quiltflow.models.pipeline import IndexPaths, derived_seed, make_dataset, num_examples, shards_of
from quiltflow.models.resume import backed_up_epoch, keep_finished_rows, read_history, write_history
from quiltflow.models.runtime import configure_runtime
from quiltflow.models.views import simclr_views

__all__ = ["nt_xent_loss", "projection_head", "simclr_model", "pretrain_dataset", "pretrain_simclr"]

log = logging.getLogger("quiltflow.models.simclr")

# Linear warm-up of the learning rate: 10 % of the steps, at most 10 epochs (SimCLR's 10 of 100);
# Adam from a random init diverges easily in the first steps of a contrastive loss.
WARMUP_FRACTION = 0.1
MAX_WARMUP_EPOCHS = 10
# Stored images are read at most this many times the view side: crops then keep the stored
# detail, and crop_and_resize (no antialiasing) never shrinks by much more than 2x.
MAX_READ_FACTOR = 2
_MASKED = -1e9  # logit of a view against itself


def nt_xent_loss(temperature: float):
    """NT-Xent (normalised temperature-scaled cross-entropy) as a Keras loss ``fn(y_true, y_pred)``.

    ``y_pred`` is ``[2B, d]`` projections with positive pairs in adjacent rows (2i, 2i+1);
    ``y_true`` is ignored (``model.fit`` needs one: zeros). Each row's loss is the cross-entropy
    of picking its partner (row ``i ^ 1``) among the other 2B - 1 rows by cosine similarity /
    temperature. Per-row float32 losses; Keras averages them. Under MirroredStrategy each replica
    contrasts its own rows only (the negatives are that replica's batch).
    """
    temperature = float(temperature)
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")

    def nt_xent(y_true, y_pred):
        del y_true
        z = tf.math.l2_normalize(tf.cast(y_pred, tf.float32), axis=1)
        n = tf.shape(z)[0]
        logits = tf.matmul(z, z, transpose_b=True) / temperature
        logits = tf.where(tf.eye(n, dtype=tf.bool), _MASKED, logits)
        partner = tf.bitwise.bitwise_xor(tf.range(n), 1)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=partner, logits=logits)

    return nt_xent


def projection_head(feature_dim: int, projection_dim: int, hidden_dim: int | None = None) -> keras.Model:
    """SimCLR's MLP g(.): dense ``hidden_dim`` (default ``feature_dim``) + ReLU, dense ``projection_dim``.

    The loss works on g(h), not on the features h: the head absorbs the invariances the loss
    forces (e.g. to colour), so h keeps more of what downstream tasks need. Output in float32.
    """
    hidden_dim = feature_dim if hidden_dim is None else hidden_dim
    inputs = keras.Input((feature_dim,), name="features")
    x = keras.layers.Dense(hidden_dim, activation="relu", name="projection_hidden")(inputs)
    outputs = keras.layers.Dense(projection_dim, dtype="float32", name="projection")(x)
    return keras.Model(inputs, outputs, name="projection_head")


def simclr_model(backbone: str, image_size: int, projection_dim: int) -> tuple[keras.Model, keras.Model]:
    """(uint8 views -> projections, the bare base inside it): the base is what pretraining keeps.

    The base is called without ``training=False``: BatchNorm uses batch statistics while
    fitting (and learns moving statistics for the downstream models' inference mode).
    """
    spec = backbone_spec(backbone)
    preprocess, base = backbone_base(spec.name, image_size)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="views")
    features = base(preprocess(inputs))
    outputs = projection_head(spec.feature_dim, projection_dim)(features)
    return keras.Model(inputs, outputs, name=f"simclr_{spec.name}"), base


def read_size(stored: int, image_size: int) -> int:
    """Side at which the shards are decoded for views of ``image_size`` (see MAX_READ_FACTOR)."""
    return min(int(stored), MAX_READ_FACTOR * int(image_size))


def pretrain_dataset(
    index_paths: IndexPaths, batch_size: int, image_size: int, seed: int | None, *, replicas: int = 1
) -> tf.data.Dataset:
    """``(views uint8 [2B, S, S, 3], zeros [2B])`` per batch of B pool images, reshuffled per epoch.

    ``make_dataset`` reads the images (labels unused); each batch then gets its two views from a
    seeded stream of seed pairs drawn afresh each epoch, as ``data``'s augmentation does. A last
    batch that ``keep_batch`` rejects (one image: no negatives) is dropped.
    """
    _, _, stored, _ = shards_of(index_paths)
    ds = make_dataset(
        index_paths,
        batch_size,
        training=True,
        augment=False,
        seed=seed,
        image_size=read_size(stored, image_size),
    )
    ds = ds.filter(lambda images, labels: keep_batch(tf.shape(images)[0], replicas))
    seeds = tf.data.Dataset.random(seed=derived_seed(seed, 4), rerandomize_each_iteration=True).batch(2)

    def two_views(batch, pair):
        views = simclr_views(batch[0], pair, out_size=int(image_size))
        return views, tf.zeros([tf.shape(views)[0]], tf.float32)

    deterministic = seed is not None
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    # The filter hides the length; Keras wants it (progress, no "ran out of data" warning).
    steps = steps_per_epoch(num_examples(index_paths), batch_size, replicas)
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)


def keep_batch(images, replicas: int = 1):
    """Whether a batch of ``images`` trains: at least 2 (negatives) and, with several replicas, a
    multiple of them (each replica then gets whole positive pairs). Works on ints and tensors."""
    return (images >= max(2, replicas)) & (images % replicas == 0)


def steps_per_epoch(pool_images: int, batch_size: int, replicas: int = 1) -> int:
    """Batches per epoch after dropping a last batch that ``keep_batch`` rejects."""
    full, rest = divmod(int(pool_images), int(batch_size))
    return full + int(bool(keep_batch(rest, replicas)))


def learning_rate_schedule(learning_rate: float, epochs: int, steps: int):
    """Linear warm-up (WARMUP_FRACTION of the steps, at most MAX_WARMUP_EPOCHS), then cosine
    decay to 0 at the last step."""
    total = max(1, int(epochs) * int(steps))
    warmup = min(int(WARMUP_FRACTION * total), MAX_WARMUP_EPOCHS * int(steps))
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=learning_rate, warmup_steps=warmup)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the epoch's last learning rate to the logs (history.csv shows the schedule)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class PretrainRun:
    """Paths and resume state of one pretraining job in ``out_dir``.

    Epoch rows go to an undeclared ``history.partial.csv`` (Snakemake deletes a rerun job's
    declared outputs before it starts, and a resumed run needs the earlier rows) and move to
    ``history.csv`` at the end, as in ``resume.TrainingRun``, which monitors a validation loss
    that pretraining does not have.
    """

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.history = self.out / "history.partial.csv"
        self.final_history = self.out / "history.csv"
        self.backup = self.out / "backup"
        self.weights = self.out / "backbone.weights.h5"

    def start(self) -> int:
        """Epochs already finished (0: a fresh start, which clears an older run's outputs).

        Rows of unfinished epochs are dropped: a kill can land between the CSV row and the backup.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        resume = backed_up_epoch(self.backup)
        if resume == 0:
            for path in (self.history, self.final_history, self.weights):
                path.unlink(missing_ok=True)
            shutil.rmtree(self.backup, ignore_errors=True)
            return 0
        keep_finished_rows(self.history, resume, self.backup)
        return resume

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """The CSV row lands before the backup (callback order), so a kill between them leaves a
        duplicate row (dropped on resume), never a gap. The backup outlives ``fit``: a kill
        before the weights are saved must not lose the finished epochs."""
        return [
            LearningRateLogger(),
            keras.callbacks.CSVLogger(str(self.history), append=self.history.is_file()),
            keras.callbacks.BackupAndRestore(str(self.backup), double_checkpoint=True, delete_checkpoint=False),
        ]

    def finish(self) -> list[dict[str, str]]:
        """Move the rows to history.csv and drop the backup (call after the weights are saved)."""
        rows = read_history(self.history)
        write_history(self.final_history, rows)
        self.history.unlink(missing_ok=True)
        shutil.rmtree(self.backup, ignore_errors=True)
        return rows


def _compiled_model(backbone: str, image_size: int, projection_dim: int, schedule, temperature: float):
    model, base = simclr_model(backbone, image_size, projection_dim)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=nt_xent_loss(temperature))
    return model, base


def _final_loss(rows: list[dict[str, str]]) -> float | None:
    """The last epoch's loss; None when there is none or it diverged (JSON has no NaN)."""
    loss = float(rows[-1]["loss"]) if rows else math.nan
    return loss if math.isfinite(loss) else None


def _pool_steps(index_paths: IndexPaths, batch_size: int, replicas: int) -> tuple[int, int]:
    """(pool images, steps per epoch); one-line errors for pools and batches that cannot train."""
    pool = num_examples(index_paths)
    if batch_size % replicas:
        raise UserError(f"pretraining batch_size {batch_size}: must be a multiple of the {replicas} GPUs")
    steps = steps_per_epoch(pool, batch_size, replicas)
    if steps == 0:
        raise UserError(f"pretraining pool has {pool} images; need at least {max(2, replicas)}")
    return pool, steps


def _info(run: PretrainRun, rows, *, resume: int, pool: int, steps: int, seconds: float, device, **settings):
    """The job's facts for pretrain_info.json (the caller adds pool and provenance keys)."""
    return {
        "method": "simclr",
        **settings,
        "epochs_run": len(rows),
        "resumed_from_epoch": resume,
        "pool_images": pool,
        "steps_per_epoch": steps,
        "views_seen": 2 * min(pool, steps * settings["batch_size"]) * len(rows),
        "wall_seconds": round(seconds, 3),
        **device,
        "weights_sha256": sha256_file(run.weights),
        "final_loss": _final_loss(rows),
    }


def pretrain_simclr(
    index_paths: IndexPaths,
    out_dir: str | Path,
    *,
    backbone: str = "resnet50",
    image_size: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    temperature: float,
    projection_dim: int,
    seed: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """Pretrain ``backbone`` with SimCLR on the pool's images; returns the job's info dict.

    ``batch_size`` is images per step (2 x that many views). Writes ``backbone.weights.h5``
    (float32 variables, also under mixed precision) and ``history.csv``; resumable.
    """
    strategy, device = configure_runtime(threads)
    keras.utils.set_random_seed(seed)
    run = PretrainRun(out_dir)
    resume = run.start()
    if resume:
        log.info("resuming pretraining in %s after epoch %d", run.out, resume)
    replicas = strategy.num_replicas_in_sync
    pool, steps = _pool_steps(index_paths, batch_size, replicas)
    with strategy.scope():
        schedule = learning_rate_schedule(learning_rate, epochs, steps)
        model, base = _compiled_model(backbone, image_size, projection_dim, schedule, temperature)
    start = time.perf_counter()
    model.fit(
        pretrain_dataset(index_paths, batch_size, image_size, seed, replicas=replicas),
        epochs=epochs,
        callbacks=run.callbacks(),
        shuffle=False,  # the reader shuffles (seeded)
        verbose=2,
    )
    seconds = time.perf_counter() - start
    base.save_weights(run.weights)
    rows = run.finish()
    log.info("pretrained %s: %d epochs, final loss %s", backbone, len(rows), _final_loss(rows))
    settings = {"backbone": backbone, "image_size": int(image_size), "batch_size": int(batch_size)}
    settings.update(learning_rate=float(learning_rate), temperature=float(temperature))
    settings.update(projection_dim=int(projection_dim), seed=int(seed))
    return _info(run, rows, resume=resume, pool=pool, steps=steps, seconds=seconds, device=device, **settings)
