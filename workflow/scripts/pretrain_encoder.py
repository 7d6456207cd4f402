"""Snakemake script: pretrain one backbone (rule ``pretrain_encoder``); out_dir = folder of output.weights."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # workflow/ on sys.path
from quiltflow.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.encoders import pretrain_from_files
from quiltflow.settings import PretrainSettings

params = snakemake.params
pretrain_from_files(
    as_paths(snakemake.input.pool),
    out_dir=Path(snakemake.output.weights).parent,
    settings=PretrainSettings.from_config(params.settings, params.name, image_size=params.image_size),
    buckets=list(params.buckets),
    seed=params.seed,
    threads=snakemake.threads,
)
