"""Snakemake script: pretrain one backbone (rule ``pretrain_encoder``); out_dir = folder of output.weights."""

from pathlib import Path

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import PretrainSettings
from quiltflow.models.encoders import pretrain_from_files

params = snakemake.params
pretrain_from_files(
    as_paths(snakemake.input.pool),
    out_dir=Path(snakemake.output.weights).parent,
    settings=PretrainSettings.from_config(params.settings, params.name, image_size=params.image_size),
    buckets=list(params.buckets),
    seed=params.seed,
    threads=snakemake.threads,
)
