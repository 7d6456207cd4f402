"""Snakemake rule index_tfrecords: check a split's shards against their reports, write its index."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import ShardSettings
from quiltflow.records.shard_index import index_split

params = snakemake.params
index_split(
    split=params.split,
    # Only the image size is recorded in the index; the rest are the schema's defaults.
    settings=ShardSettings.from_config({}, image_size=params.image_size),
    shard_paths=list(snakemake.input.shards),
    report_paths=list(snakemake.input.reports),
    label_map_path=snakemake.input.label_map,
    index_path=snakemake.output.index,
)
