"""Snakemake script of rule pool_runs: one model's out-of-fold predictions and pooled metrics."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.evaluation.pooling import pool_runs

params = snakemake.params
pool_runs(
    list(snakemake.input.predictions),
    list(snakemake.input.metrics),
    label_map_path=snakemake.input.label_map,
    folds_path=snakemake.input.folds,
    predictions_out=snakemake.output.predictions,
    metrics_out=snakemake.output.metrics,
    model=params.model,
    folds=params.folds,
    seeds=list(params.seeds),
    top_k=params.top_k,
)
