import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# The stage logic is the quiltflow package beside this folder; the Snakefile imports it at
# DAG-build time (config validation, shard counts). The stage scripts import it without path code
# of their own: Snakemake's script preamble extends each job's sys.path with this process's
# sys.path (a cluster job parses this file again in its own process).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from quiltflow.dag.codehash import code_version  # noqa: E402
from quiltflow.dag.config import (  # noqa: E402
    DEMO_IMAGES,
    DEMO_LOOKUP,
    explain_models,
    explain_bag_models,
    target_models,
    frozen_models,
    bag_models,
    validate_config,
    weights_files,
)
from quiltflow.core import paths  # noqa: E402
from quiltflow.core.cv import buckets, run_buckets, run_of, runs, unlabeled_buckets  # noqa: E402
from quiltflow.core.paths import fill  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.dag.pretraining import (  # noqa: E402
    model_pretraining,
    pretrained_file,
    pool_buckets,
    pretrain_suffix,
    fold_of_suffix,
    uses_unlabeled,
)
from quiltflow.dag.representations import model_representation, representations  # noqa: E402
from quiltflow.dag.shard_plan import shard_names  # noqa: E402
from quiltflow.core.tasks import MULTILABEL as _MULTILABEL_TASK, task_of_policy  # noqa: E402

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

try:
    # One-line error naming the key or path, before any job runs.
    _validated = validate_config(config)
except UserError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_validated)
validate(config, SCHEMA)  # Snakemake's own check, for tools that expect it (passes here).

MODELS = sorted(config["models"])
FROZEN = frozen_models(config)
# Frozen representations (quiltflow.dag.representations): one feature cache each, shared by the
# models that train on it; a representation's weights inputs are those of any of its models.
REPRESENTATIONS = representations(config)
REPRESENTATION_MODEL = {
    name: next(m for m in sorted(FROZEN) if model_representation(config, m).name == name)
    for name in REPRESENTATIONS
}
# Bag models (unit video, quiltflow.models.mil): trained on the frozen features of a video's frames,
# evaluated by rule evaluate_bag_model (one prediction per video, plus each frame's attention).
BAGS = bag_models(config)
FRAME_MODELS = [m for m in MODELS if m not in BAGS]
# {model} in the outputs of the rules of one kind only ("(?!)" matches nothing).
FRAME_MODEL = "{model," + ("|".join(FRAME_MODELS) or "(?!)") + "}"
BAG_MODEL = "{model," + ("|".join(BAGS) or "(?!)") + "}"
DATASET = config["dataset"]
DEMO = DATASET["demo"]["enabled"]
# Cross-validation by video (quiltflow.core.cv): buckets of images (each sharded and featurised once)
# and runs (fold x seed). One holdout run keeps the single-run paths (empty run suffix).
FOLDS = config["splits"]["folds"]
SEEDS = config["seeds"] or [config["seed"]]
BUCKETS = buckets(FOLDS)
RUNS = runs(FOLDS, SEEDS)
RUN_SUFFIXES = [run.suffix for run in RUNS]
SINGLE_RUN = RUN_SUFFIXES == [""]
# Pretraining entries (quiltflow.dag.pretraining): one job each, or one per fold with folds >= 2.
PRETRAININGS = sorted(config["pretraining"])
# pool: unlabeled (quiltflow.data.unlabeled): the frames the filters removed for their label get
# buckets of their own, sharded like the others (rule split_unlabeled); none without it.
UNLABELED_BUCKETS = unlabeled_buckets(FOLDS) if uses_unlabeled(config) else []
SHARDED_BUCKETS = BUCKETS + UNLABELED_BUCKETS
# Test-time augmentation (evaluation.tta): rule evaluate_tta writes {model}{run}.tta.* beside the
# plain evaluation's files; the comparison reports them as {model}+tta rows.
TTA = config["evaluation"]["tta"] != "none"
# The learning task (quiltflow.core.tasks): split_manifests records it in label_map.json, where every
# job reads it; the DAG needs it only for the multi-label comparison's extra plot.
TASK = task_of_policy(config["filters"]["label_policy"])
MULTILABEL = TASK == _MULTILABEL_TASK
# A model's predictions and metrics pooled over its runs (or of its one holdout run).
POOLED_PREDICTIONS = fill(paths.PREDICTIONS, run="")
POOLED_METRICS = fill(paths.METRICS, run="")
# Near-duplicate hashes, written by rule hash_images once per dataset (not per filter change).
NEAR_DUPLICATES = config["filters"]["near_duplicates"] not in ("off", False)


wildcard_constraints:
    split="|".join(SHARDED_BUCKETS),
    # "(?:)" matches only the empty suffix (an empty constraint would mean "any").
    run=r"(?:)" if SINGLE_RUN else r"[/]fold\d+-seed\d+",
    model="|".join(MODELS),
    representation="|".join(REPRESENTATIONS) or r"(?!)",
    pretrain="|".join(PRETRAININGS) or r"(?!)",
    # The pretraining job a run's backbone comes from ('' or /fold{f}); features of a model
    # that starts from a per-fold pretraining are cached per fold too.
    fold=r"(?:)" if FOLDS == 1 else r"[/]fold\d+",
    pretrain_fold=r"(?:)" if FOLDS == 1 else r"(?:|[/]fold\d+)",
    # '' = the plain evaluation, .tta = its test-time augmentation variant (evaluation.tta).
    variant=r"(?:|\.tta)" if TTA else r"(?:)",
    index=r"\d{5}",
    total=r"\d{5}",


def script_code(script):
    """The ``code`` param for a job running ``script``, a hash of every quiltflow module it
    imports, directly or not (Snakemake's code trigger sees only the script itself)."""
    return code_version(Path(workflow.basedir) / "workflow" / "scripts" / script)


def dataset_inputs(wildcards):
    """hash_images' inputs: the lookup (not for folder) and the image root."""
    inputs = {"image_root": DATASET["image_root"]}
    if DATASET["format"] != "folder":
        inputs["metadata"] = DATASET["metadata"]
    return inputs


def metadata_inputs(wildcards):
    """filter_metadata's inputs: the dataset, and the image hashes unless near_duplicates is off."""
    inputs = dataset_inputs(wildcards)
    if NEAR_DUPLICATES:
        inputs["hashes"] = paths.IMAGE_HASHES
    return inputs


def shard_paths(split, suffix=".tfrecord"):
    """Shard files of one split, from the shard plan (the checkpoint; see README "Shard count")."""
    with open(checkpoints.plan_shards.get().output.plan) as fh:
        plan = json.load(fh)
    folder = Path(paths.SHARD).parent
    return [fill(f"{folder}/{name}", split=split) for name in shard_names(plan, split, suffix)]


def model_settings(wildcards):
    return config["models"][wildcards.model]


def run_split(wildcards, split):
    """The buckets a run trains (split="train"), validates or tests on."""
    return run_buckets(run_of(wildcards.run, FOLDS, SEEDS).fold, FOLDS)[split]


def run_seed(wildcards):
    return run_of(wildcards.run, FOLDS, SEEDS).seed


def train_inputs(wildcards):
    train, val = run_split(wildcards, "train"), run_split(wildcards, "val")
    fold = run_of(wildcards.run, FOLDS, SEEDS).fold
    inputs = {
        "train": [fill(paths.SHARD_INDEX, split=b) for b in train],
        "val": [fill(paths.SHARD_INDEX, split=b) for b in val],
        "label_map": paths.LABEL_MAP,
        "split_report": paths.SPLIT_REPORT,
        "weights": weights_input(wildcards.model, fold),
        "pretrain_info": pretrain_info_input(wildcards.model, fold),
    }
    if wildcards.model in FROZEN:
        features = model_features_pattern(wildcards.model, fold)
        inputs["features_train"] = [fill(features, split=b) for b in train]
        inputs["features_val"] = [fill(features, split=b) for b in val]
    if wildcards.model in BAGS:  # the videos (group column) of the frames
        inputs["manifest_train"] = [fill(paths.MANIFEST, split=b) for b in train]
        inputs["manifest_val"] = [fill(paths.MANIFEST, split=b) for b in val]
    return inputs


def model_features(model, run, split_of_run):
    """A frozen model's cached feature files of a run's train, val or test buckets."""
    fold = run_of(run, FOLDS, SEEDS).fold
    features = model_features_pattern(model, fold)
    return [fill(features, split=b) for b in run_buckets(fold, FOLDS)[split_of_run]]


def evaluate_bag_inputs(wildcards):
    """evaluate_bag_model's inputs: the model, and the test buckets' features and manifests."""
    inputs = evaluate_inputs(wildcards)
    del inputs["test"]  # the bag model reads cached features, not shards
    inputs["features"] = model_features(wildcards.model, wildcards.run, "test")
    return inputs


def evaluate_inputs(wildcards):
    test = run_split(wildcards, "test")
    run = {"model": wildcards.model, "run": wildcards.run}
    return {
        "model": fill(paths.MODEL, **run),
        "info": fill(paths.TRAIN_INFO, **run),
        "test": [fill(paths.SHARD_INDEX, split=b) for b in test],
        "manifest": [fill(paths.MANIFEST, split=b) for b in test],
        "label_map": paths.LABEL_MAP,
    }


def metrics_targets():
    """Every model's metrics JSON (pooled over runs with several), and its TTA variant's with tta on."""
    variants = ["", paths.TTA_VARIANT] if TTA else [""]
    # Test-time augmentation flips images: bag models (cached features) have none.
    return expand(POOLED_METRICS, model=FRAME_MODELS, variant=variants) + expand(
        POOLED_METRICS, model=BAGS, variant=""
    )


def pooled_model_name(wildcards):
    """pool_runs' model name: {model}, or {model}+tta for the TTA variant ({variant} = .tta)."""
    return f"{wildcards.model}{paths.TTA_ROW_SUFFIX}" if wildcards.variant else wildcards.model


def model_runs(pattern):
    """``pattern`` (with {model} and {run}) for every model and run."""
    return [pattern.format(model=m, run=r) for m in MODELS for r in RUN_SUFFIXES]


def weights_input(model, fold):
    """A model's weights file as an input (a user's file, or the backbone of the pretraining job
    of ``fold``): a changed or remade file reruns the model. Empty for none."""
    name = model_pretraining(config, model)
    if name is None:
        return weights_files(config, model)
    return [pretrained_file(name, pretrain_suffix(fold, FOLDS), paths.PRETRAINED_WEIGHTS_FILE)]


def pretrain_info_input(model, fold):
    """pretrain_info.json of the model's pretraining job (its provenance in train_info.json)."""
    name = model_pretraining(config, model)
    return (
        []
        if name is None
        else [pretrained_file(name, pretrain_suffix(fold, FOLDS), paths.PRETRAIN_INFO_FILE)]
    )


def features_suffix(model, fold):
    """Path part of a frozen model's feature cache: per fold when its backbone is (pretraining)."""
    return "" if model_pretraining(config, model) is None else pretrain_suffix(fold, FOLDS)


def model_features_pattern(model, fold):
    """A frozen model's feature cache for a run of ``fold`` ({split} left open): its
    representation's, shared with the other models of that representation."""
    return fill(
        paths.FEATURES,
        representation=model_representation(config, model).name,
        pretrain_fold=features_suffix(model, fold),
    )


def features_weights(wildcards):
    """extract_features' weights input; its {pretrain_fold} tells which fold's backbone."""
    model = REPRESENTATION_MODEL[wildcards.representation]
    return weights_input(model, fold_of_suffix(wildcards.pretrain_fold))


def representation_settings(wildcards):
    """extract_features' settings: the representation's extractor and weights only, so a change
    to a model's hyperparameters reruns no extraction."""
    rep = REPRESENTATIONS[wildcards.representation]
    return {"architecture": rep.architecture, "weights": rep.weights}


def pretrain_pool(wildcards):
    """Index JSONs of the buckets a pretraining job reads (quiltflow.dag.pretraining.pool_buckets)."""
    pool = config["pretraining"][wildcards.pretrain]["pool"]
    buckets = pool_buckets(pool, fold_of_suffix(wildcards.fold), FOLDS)
    return [fill(paths.SHARD_INDEX, split=b) for b in buckets]


def pretrain_unlabeled_report(wildcards):
    """unlabeled_report.json for a pool: unlabeled job (its fold's counts go to pretrain_info.json)."""
    pool = config["pretraining"][wildcards.pretrain]["pool"]
    return [paths.UNLABELED_REPORT] if pool == "unlabeled" else []


# Grad-CAM explanations (explain.smk): the models the target `explain` asks for.
EXPLAIN = config["explain"]
EXPLAIN_MODELS = explain_models(config)
# Bag models: their attention galleries (rule explain_attention) instead of Grad-CAM.
EXPLAIN_BAGS = explain_bag_models(config)


def explain_inputs(wildcards):
    """The model of the first run (fold 0, first seed; the only run without folds or seeds), its
    test predictions and test shards: the images are read from the shards, as the model saw them."""
    run = RUN_SUFFIXES[0]
    return {
        "model": fill(paths.MODEL, model=wildcards.model, run=run),
        "predictions": fill(paths.PREDICTIONS, model=wildcards.model, run=run, variant=""),
        "test": [
            fill(paths.SHARD_INDEX, split=b) for b in run_buckets(RUNS[0].fold, FOLDS)["test"]
        ],
        "label_map": paths.LABEL_MAP,
    }


def explain_attention_inputs(wildcards):
    """A bag model's first run (fold 0, first seed): its attention, video predictions and test shards."""
    run = RUN_SUFFIXES[0]
    return {
        "attention": fill(paths.ATTENTION, model=wildcards.model, run=run),
        "predictions": fill(paths.PREDICTIONS, model=wildcards.model, run=run, variant=""),
        "test": [
            fill(paths.SHARD_INDEX, split=b) for b in run_buckets(RUNS[0].fold, FOLDS)["test"]
        ],
        "label_map": paths.LABEL_MAP,
    }


# --- --until and the plan_shards checkpoint ---------------------------------------------------
# Snakemake turns --until into target jobs once, before the checkpoint has run: a job that only
# exists after it (every shard job) is then never a target, and `--until shard_tfrecords` on a
# fresh directory plans nothing and exits 0. Say so instead, and name the targets that work.
BEFORE_SHARD_PLAN = {
    "generate_demo_data",
    "filter_metadata",
    "split_manifests",
    "split_unlabeled",
    "plan_shards",
    "hash_images",
    "fetch_encoder",
    "fetch_imagenet_weights",
}


def check_until(until, plan_exists):
    """Stop with one line when --until names a stage after the (not yet run) shard checkpoint."""
    if plan_exists:
        return
    after = sorted(
        name
        for name in until
        if name not in BEFORE_SHARD_PLAN
        and not name.startswith(
            (
                f"{Path(paths.FILTERED).parent}/",
                f"{paths.SPLITS_DIR}/",
                "resources/demo/",
                f"{paths.ENCODERS_DIR}/",
                paths.SHARD_PLAN,
            )
        )
    )
    if after:
        raise WorkflowError(
            f"--until {' '.join(after)}: its jobs are only known after the plan_shards checkpoint has run, "
            "and Snakemake would plan nothing; ask for a target instead: "
            "`snakemake tfrecords` (shards + indexes), `snakemake train` or `snakemake evaluate`"
        )


def all_targets(wildcards):
    """rule all's inputs; checks --until here because Snakemake sets it only after parsing."""
    check_until(workflow.dag_settings.until, Path(paths.SHARD_PLAN).exists())
    return [
        fill(paths.COMPARISON, ext="md"),
        *metrics_targets(),
        *model_runs(paths.MODEL),
        *expand(fill(paths.ATTENTION, run=""), model=BAGS),
        *compare_videos_targets(),
    ]


def compare_videos_targets():
    """The video-level comparison of frame and bag models: when a bag model is configured."""
    return [fill(paths.COMPARISON_VIDEO, ext="md")] if BAGS else []


# --- prediction on new images (rules predict_images, predict) ----------------------------------
PREDICT = config["predict"]
# Prediction on new images: a frame model gives one row per image (rule predict_images), a bag
# model one row per video (rule predict_videos; videos are the sub-folders of predict.images or
# its group column).
PREDICT_MODELS = target_models(config, "predict")


def predict_images_input(wildcards):
    """The predict.images folder or table; one line when it is unset or missing."""
    images = PREDICT["images"]
    if not images:
        raise WorkflowError(
            "snakemake predict: config key predict.images is not set; name a folder of images or "
            "a CSV/Parquet with a path column in your config (predict: {images: /path/to/images})"
        )
    if not Path(images).exists():
        raise WorkflowError(f"config key predict.images: {images} does not exist")
    return images


def predict_models_input(wildcards):
    """Every run's model.keras of one model (one holdout run: just results/models/{model}/)."""
    return [fill(paths.MODEL, model=wildcards.model, run=run) for run in RUN_SUFFIXES]


def predict_train_info_input(wildcards):
    """Every run's train_info.json, next to its model.keras (a multi-label run's thresholds)."""
    return [fill(paths.TRAIN_INFO, model=wildcards.model, run=run) for run in RUN_SUFFIXES]


def predict_weights_input(wildcards):
    """A bag model's weights files of every run's fold: its frames' features are computed anew."""
    folds = sorted({run_of(run, FOLDS, SEEDS).fold for run in RUN_SUFFIXES})
    return sorted({path for fold in folds for path in weights_input(wildcards.model, fold)})


def predict_targets(wildcards):
    predict_images_input(wildcards)
    bags = [model for model in PREDICT_MODELS if model in BAGS]
    return expand(paths.PREDICT, model=PREDICT_MODELS, ext=("parquet", "csv")) + expand(
        paths.PREDICT_ATTENTION, model=bags
    )
