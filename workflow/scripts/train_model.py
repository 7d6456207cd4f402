"""Snakemake script: train one model (rule ``train_model``); out_dir = folder of output.model."""

from pathlib import Path

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import ModelSettings, ShardSettings
from quiltflow.dag.pretraining import resolve_model_weights
from quiltflow.models.train import train_from_files

inp, params = snakemake.input, snakemake.params
settings, provenance = resolve_model_weights(
    ModelSettings.from_config(params.settings, params.model), as_paths(inp.weights), as_paths(inp.pretrain_info)
)
# How this run's images were prepared: train_info.json records it for prediction on new images.
shards = ShardSettings.from_config(params.shards, image_size=params.image_size)
provenance = {**(provenance or {}), "shards": shards.preparation()}


# Only frozen-backbone models have feature inputs; bag models (unit video) also the manifests' videos.
features = (as_paths(inp.features_train), as_paths(inp.features_val)) if hasattr(inp, "features_train") else None
if hasattr(inp, "manifest_train"):
    from quiltflow.models.train_mil import train_bags_from_files

    train_bags_from_files(
        features=features,
        manifests=(as_paths(inp.manifest_train), as_paths(inp.manifest_val)),
        label_map=inp.label_map,
        out_dir=Path(snakemake.output.model).parent,
        settings=settings,
        image_size=params.image_size,
        seed=params.seed,
        threads=snakemake.threads,
        provenance=provenance,
    )
    raise SystemExit(0)
train_from_files(
    train_index=as_paths(inp.train),
    val_index=as_paths(inp.val),
    label_map=inp.label_map,
    split_report=inp.split_report,
    features=features,
    out_dir=Path(snakemake.output.model).parent,
    settings=settings,
    image_size=params.image_size,
    seed=params.seed,
    train_buckets=list(params.train_buckets),
    feature_seed=params.feature_seed,
    threads=snakemake.threads,
    provenance=provenance,
)
