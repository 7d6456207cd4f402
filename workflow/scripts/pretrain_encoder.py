"""Snakemake script: pretrain one backbone (rule ``pretrain_encoder``); out_dir = folder of output.weights."""

from pathlib import Path

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import PretrainSettings
from quiltflow.dag.pretraining import fold_of_suffix
from quiltflow.data.unlabeled import read_fold_facts
from quiltflow.models.encoders import pretrain_from_files

params = snakemake.params
# pool: unlabeled: the fold's unlabeled frames in the pool and those the leakage rule left out.
unlabeled = as_paths(snakemake.input.unlabeled)
pool_facts = read_fold_facts(unlabeled[0], fold_of_suffix(snakemake.wildcards.fold)) if unlabeled else {}
pretrain_from_files(
    as_paths(snakemake.input.pool),
    out_dir=Path(snakemake.output.weights).parent,
    settings=PretrainSettings.from_config(params.settings, params.name, image_size=params.image_size),
    buckets=list(params.buckets),
    seed=params.seed,
    threads=snakemake.threads,
    pool_facts=pool_facts,
)
