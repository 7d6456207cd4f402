"""Snakemake rule shard_tfrecords: one TFRecord shard of a split manifest (PIL, no TensorFlow)."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import ShardSettings
from quiltflow.data.shards import write_shard

params = snakemake.params
# The rule passes the keys this job uses; section_values fills the rest from the schema.
settings = ShardSettings.from_config(
    {"jpeg_quality": params.jpeg_quality, "framing": params.framing, "grid_size": params.grid_size},
    image_size=params.image_size,
)
write_shard(
    manifest_path=snakemake.input.manifest,
    image_root=snakemake.input.image_root,
    shard_index=int(params.shard_index),
    num_shards=int(params.num_shards),
    settings=settings,
    out_path=snakemake.output.shard,
    report_path=snakemake.output.report,
)
