"""Snakemake script: video-grouped, label-stratified train/val/test manifests."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import SplitSettings
from quiltflow.data.splits import fold_assignment, make_splits, write_splits
from quiltflow.records.tables import FOLDS_SCHEMA, read_filtered, write_parquet_stable

params = snakemake.params
settings = SplitSettings.from_config(
    {"fractions": dict(params.fractions), "use_source_val": params.use_source_val, "folds": params.folds},
    seed=params.seed,
)
manifests, label_map, report = make_splits(read_filtered(snakemake.input.table), settings, params.task)
out = snakemake.output
write_splits(manifests, label_map, report, dict(zip(params.buckets, out.manifests)), out.label_map, out.report)
write_parquet_stable(fold_assignment(manifests), out.folds, FOLDS_SCHEMA)
