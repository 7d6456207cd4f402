"""Snakemake script: filter the dataset metadata into results/metadata/filtered.parquet."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import FilterSettings
from quiltflow.data.image_hashes import read_image_hashes
from quiltflow.data.metadata import filter_metadata
from quiltflow.records.tables import write_filtered

# The folder format has no metadata file, so the rule may leave that input out.
metadata = getattr(snakemake.input, "metadata", None) or None
hashes = getattr(snakemake.input, "hashes", None)  # absent when filters.near_duplicates is off
table, report = filter_metadata(
    snakemake.params.format,
    metadata,
    snakemake.input.image_root,
    FilterSettings.from_config(snakemake.params.filters),
    dict(snakemake.params.columns or {}),
    threads=snakemake.threads,
    image_hashes=read_image_hashes(hashes) if hashes else None,
)
write_filtered(table, report, snakemake.output.table, snakemake.output.report)
