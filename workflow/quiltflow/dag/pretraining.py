"""Which images each pretraining job sees, where its backbone lands, and who uses it.

The leakage rule lives here, once: a pretraining job with ``pool: train`` reads the training
buckets of one fold (the holdout ``train`` bucket when ``splits.folds`` is 1), so it never sees a
validation or test image of a run that starts from it; with k folds there is one job per fold and
a run of fold f uses the job of fold f. ``pool: unlabeled`` adds the frames the filters removed
for their label (quiltflow.data.unlabeled): those whose unit (video, or videos joined by
near-duplicates) touches no labelled video, and the twin bucket of each training bucket; never a
frame whose unit touches a validation or test video of the fold. Standard library only: the
Snakefile plans with it.
"""

from __future__ import annotations

from quiltflow.core.architectures import PRETRAINED_PREFIX, architecture, encoder_name, pretrained_name
from quiltflow.core.cv import UNLABELED, run_buckets, unlabeled_bucket
from quiltflow.core.errors import UserError
from quiltflow.core.paths import PRETRAINED_DIR, PRETRAINED_WEIGHTS_FILE, fill
from quiltflow.dag.encoders import provenance as encoder_provenance


def pretrain_suffix(fold: int, folds: int) -> str:
    """Path part of the pretraining job a run of ``fold`` uses: '' (one job) or '/fold{f}'."""
    return "" if folds == 1 else f"/fold{fold}"


def fold_of_suffix(suffix: str) -> int:
    """The fold of a pretraining suffix ('' -> 0, '/fold3' -> 3)."""
    return int(suffix.removeprefix("/fold")) if suffix else 0


POOLS = ("train", "unlabeled")


def pool_buckets(pool: str, fold: int, folds: int) -> list[str]:
    """The buckets a pretraining job of ``fold`` reads; never a val or test bucket of that fold's
    runs, nor unlabeled frames whose unit touches one."""
    if pool not in POOLS:
        raise UserError(f"config key pretraining.*.pool: {pool!r} is not one of {', '.join(POOLS)}")
    train = run_buckets(fold, folds)["train"]
    if pool == "train":
        return train
    return [*train, UNLABELED, *(unlabeled_bucket(name) for name in train)]


def uses_unlabeled(config: dict) -> bool:
    """Whether a pretraining entry reads unlabeled frames (rule split_unlabeled is then planned)."""
    return any(entry["pool"] == "unlabeled" for entry in config.get("pretraining", {}).values())


def pretrained_file(name: str, suffix: str, file: str = PRETRAINED_WEIGHTS_FILE) -> str:
    """A file of pretraining job ``name`` (fold part ``suffix``), as ``quiltflow.core.paths`` lays it out."""
    return f"{fill(PRETRAINED_DIR, pretrain=name, fold=suffix)}/{file}"


def model_pretraining(config: dict, model: str) -> str | None:
    """The ``pretraining`` entry a model starts from (None when its weights are not pretrained:)."""
    return pretrained_name(config["models"][model]["weights"])


def check_model_pretraining(config: dict) -> None:
    """Every ``weights: pretrained:<name>`` names an entry whose backbone the architecture has."""
    for model, entry in config["models"].items():
        name = pretrained_name(entry["weights"])
        if name is None:
            continue
        key = f"config key models.{model}.weights"
        if name not in config.get("pretraining", {}):
            have = sorted(config.get("pretraining", {}))
            raise UserError(f"{key}: pretrained:{name} names no entry of pretraining (defined: {have or 'none'})")
        spec = architecture(entry["architecture"])
        wanted = config["pretraining"][name]["backbone"]
        if spec.backbone != wanted:
            raise UserError(f"{key}: {spec.name} has backbone {spec.backbone}, pretraining.{name} trains {wanted}")


# --- running a job, and its provenance downstream ---------------------------------------------

# pretrain_info.json keys of a ``pool: unlabeled`` job (quiltflow.data.unlabeled.fold_facts):
# its fold's unlabeled frames in the pool, and those left out by the leakage rule.
UNLABELED_KEYS = ("unlabeled_images", "unlabeled_excluded_leakage")


def describe(name: str, info: dict) -> str:
    """The weights provenance a comparison row shows, e.g.
    ``pretrained:simclr (simclr resnet50, 20 epochs on 360 train images)``."""
    pool = "train+unlabeled" if info["pool"] == "unlabeled" else info["pool"]
    return (
        f"{PRETRAINED_PREFIX}{name} ({info['method']} {info['backbone']}, "
        f"{info['epochs_run']} epochs on {info['pool_images']} {pool} images)"
    )


def pooled_description(descriptions: list[str], records: list[dict | None]) -> str:
    """One weights description for the runs of a model pooled over folds. Per-fold pretraining jobs
    (``records``: each run's train_info ``pretraining``) differ only in their pool size, shown as a
    range; anything else that differs is named as other weights."""
    if len(set(descriptions)) == 1:
        return descriptions[0]
    varying = ("pool_images", "pool_buckets", "weights_sha256", *UNLABELED_KEYS)
    shared = {tuple(sorted((k, str(v)) for k, v in r.items() if k not in varying)) for r in records if r}
    if None in records or len(shared) != 1:
        return f"{descriptions[0]} (+{len(set(descriptions)) - 1} other)"
    sizes = sorted(int(r["pool_images"]) for r in records)
    first = dict(records[0], pool_images=f"{sizes[0]}-{sizes[-1]}")
    return describe(first["name"], first).removesuffix(" images)") + " images per fold)"


def provenance(info_path) -> dict:
    """``{"description", "pretraining"}`` for train_info.json from a job's pretrain_info.json."""
    from quiltflow.core.jsonio import read_json

    info = read_json(info_path, "pretrain info")
    keep = ("name", "method", "backbone", "pool", "pool_buckets", "pool_images", "epochs_run", "weights_sha256")
    record = {key: info.get(key) for key in keep}
    record.update({key: info[key] for key in UNLABELED_KEYS if key in info})  # pool: unlabeled only
    return {"description": describe(info["name"], info), "pretraining": record}


def resolve_model_weights(settings, weights_files, info_files=()):
    """(settings, provenance) of a model job: ``pretrained:<name>`` becomes the job's backbone
    file (its input), ``encoder:<name>`` the encoder's encoder_info.json (its input; the record
    of rule fetch_encoder); other weights pass through with no provenance."""
    encoder = encoder_name(settings.weights)
    if encoder is not None:
        if len(weights_files) != 1:
            raise UserError(f"models.{settings.name}.weights: encoder:{encoder} needs its encoder_info.json as input")
        return settings.with_weights_file(weights_files[0]), encoder_provenance(weights_files[0])
    name = pretrained_name(settings.weights)
    if name is None:
        return settings, None
    if len(weights_files) != 1:
        raise UserError(f"models.{settings.name}.weights: pretrained:{name} needs its backbone file as the job's input")
    return settings.with_weights_file(weights_files[0]), provenance(info_files[0]) if info_files else None
