"""Snakemake rule shard_tfrecords: one TFRecord shard of a split manifest (PIL, no TensorFlow)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.shards import write_shard  # noqa: E402

write_shard(
    manifest_path=snakemake.input.manifest,  # noqa: F821
    image_root=snakemake.input.image_root,  # noqa: F821
    shard_index=int(snakemake.params.shard_index),  # noqa: F821
    num_shards=int(snakemake.params.num_shards),  # noqa: F821
    image_size=int(snakemake.params.image_size),  # noqa: F821
    jpeg_quality=int(snakemake.params.jpeg_quality),  # noqa: F821
    out_path=snakemake.output.shard,  # noqa: F821
    report_path=snakemake.output.report,  # noqa: F821
)
