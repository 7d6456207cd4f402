"""Where things are: the workflow's own folders and the ``results/`` layout, in one place.

Rules (through ``workflow/rules/common.smk``) and Python callers ask here; no other module spells
these paths. Patterns use Snakemake's ``{wildcard}`` syntax: a rule uses them as they are, Python
fills them with :func:`fill` (which leaves the wildcards it is not given in place, so a pattern can
be filled in steps, as ``expand`` with ``{{double braces}}`` would). Standard library only.

Wildcards: ``{split}`` a bucket (``train``, ``fold0a``, ...); ``{run}`` a run's path
part (``""`` for one holdout run, else ``/fold{f}-seed{s}``: ``quiltflow.core.cv``); ``{variant}``
``""`` or :data:`TTA_VARIANT`; ``{fold}``/``{pretrain_fold}`` a pretraining job's fold part;
``{representation}`` a frozen representation's name (``quiltflow.dag.representations``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # workflow/quiltflow
WORKFLOW_DIR = PACKAGE_DIR.parent  # workflow/
SCHEMAS_DIR = WORKFLOW_DIR / "schemas"
CONFIG_SCHEMA = SCHEMAS_DIR / "config.schema.yaml"
METRICS_SCHEMA = SCHEMAS_DIR / "metrics.schema.json"

RESULTS = "results"

# Data: hashes, the filtered table, the split manifests.
IMAGE_HASHES = "results/metadata/image_hashes.parquet"
FILTERED = "results/metadata/filtered.parquet"
FILTER_REPORT = "results/metadata/filter_report.json"
SPLITS_DIR = "results/splits"
MANIFEST = "results/splits/{split}.parquet"
LABEL_MAP_FILE = "label_map.json"
LABEL_MAP = f"{SPLITS_DIR}/{LABEL_MAP_FILE}"
SPLIT_REPORT = "results/splits/split_report.json"
FOLDS_TABLE = "results/splits/folds.parquet"
# pretraining pool: unlabeled (rule split_unlabeled): every frame the filters removed for its label,
# with its unit and bucket, and the counts; each unlabeled bucket's manifest is a MANIFEST.
UNLABELED_FRAMES = "results/splits/unlabeled_frames.parquet"
UNLABELED_REPORT = "results/splits/unlabeled_report.json"

# Shards: the plan (the checkpoint), one shard and its report per job, one index per bucket.
SHARD_PLAN = "results/tfrecords/shard_plan.json"
SHARD_STEM = "results/tfrecords/{split}/{split}-{index}-of-{total}"
SHARD = SHARD_STEM + ".tfrecord"
SHARD_REPORT = SHARD_STEM + ".report.json"
SHARD_INDEX = "results/tfrecords/{split}.index.json"

# Models: features of frozen representations (one cache per representation, shared by its models:
# quiltflow.dag.representations), pretraining jobs, one folder per training run.
FEATURES = "results/features/{representation}{pretrain_fold}/{split}.npz"
PRETRAINED_DIR = "results/pretrained/{pretrain}{fold}"
PRETRAINED_WEIGHTS_FILE = "backbone.weights.h5"
PRETRAIN_INFO_FILE = "pretrain_info.json"
MODEL_DIR = "results/models/{model}{run}"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
TRAIN_INFO_FILE = "train_info.json"  # next to each run's model.keras
MODEL = f"{MODEL_DIR}/{MODEL_FILE}"
HISTORY = f"{MODEL_DIR}/{HISTORY_FILE}"
TRAIN_INFO = f"{MODEL_DIR}/{TRAIN_INFO_FILE}"

# Published encoders (rule fetch_encoder): one folder per encoders.<name>, its checkpoint and record.
ENCODERS_DIR = "resources/encoders"
ENCODER_DIR = "resources/encoders/{encoder}"
ENCODER_CHECKPOINT_DIR = f"{ENCODER_DIR}/checkpoint"  # the downloaded preset (hf://, kaggle://)
ENCODER_INFO_FILE = "encoder_info.json"
ENCODER_INFO = f"{ENCODER_DIR}/{ENCODER_INFO_FILE}"
# keras.applications' ResNet50 ImageNet weights (weights: imagenet), fetched the same way by rule
# fetch_imagenet_weights into a folder of their own: jobs read this file, never the Keras cache.
IMAGENET_ENCODER = "imagenet-resnet50"  # its hyphen: no encoders.<name> (schema: [A-Za-z0-9_]+) is this folder
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"  # keras.applications' name
IMAGENET_DIR = f"{ENCODERS_DIR}/{IMAGENET_ENCODER}"
IMAGENET_WEIGHTS = f"{IMAGENET_DIR}/{IMAGENET_WEIGHTS_FILE}"
IMAGENET_INFO = f"{IMAGENET_DIR}/{ENCODER_INFO_FILE}"

# Evaluation: per run (and pooled over runs), plain and test-time augmented.
TTA_VARIANT = ".tta"  # file-name part of a model's TTA evaluation (rule evaluate_tta)
TTA_ROW_SUFFIX = "+tta"  # its name in the comparison and in pooled metrics
PREDICTIONS = "results/predictions/{model}{run}{variant}.parquet"
METRICS = "results/metrics/{model}{run}{variant}.json"
# Bag models (unit video): each test frame's attention weight within its video, per run and pooled.
ATTENTION = "results/attention/{model}{run}.parquet"

# Comparison, prediction on new images, explanations.
COMPARISON = "results/comparison.{ext}"
# Frame and bag models side by side at the video (issue 27; written when a bag model is configured).
COMPARISON_VIDEO = "results/comparison_video.{ext}"
PLOT = "results/plots/{name}.png"
PREDICT = "results/predict/{model}.{ext}"
# A bag model on new videos: each listed frame, its status and its attention within its video.
PREDICT_ATTENTION = "results/predict/{model}.attention.parquet"
EXPLAIN_DIR = "results/explain/{model}"
# Bag models (issue 27): each shown test video's most and least attended frames, and what was shown.
ATTENTION_GALLERY = f"{EXPLAIN_DIR}/attention.png"
ATTENTION_GALLERY_INDEX = f"{EXPLAIN_DIR}/attention.json"

# Frozen representations probed (linear probe, k-NN) at label budgets: predictions, budgets, summary.
PROBE = "results/probe/{representation}.parquet"  # quiltflow.dag.representations names
PROBE_BUDGETS = "results/probe/{representation}.budgets.json"
PROBE_SUMMARY = "results/probe/summary.{ext}"


def fill(pattern: str, **values: object) -> str:
    """``pattern`` with the given wildcards replaced and every other one left as it is."""
    for name, value in values.items():
        pattern = pattern.replace("{" + name + "}", str(value))
    return pattern
