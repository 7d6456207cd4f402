"""Snakemake script of checkpoint plan_shards: rows and shard count per split."""

import json

from quiltflow.core.jsonio import write_json
from quiltflow.core.settings import section_values
from quiltflow.core.smk import setup_logging
from quiltflow.dag.shard_plan import plan_shards

log = setup_logging(snakemake.log[0])
params = snakemake.params
# The plan needs images_per_shard only (no image_size: a new image size must not re-plan, or the
# shard jobs it reruns would hide behind the checkpoint in a dry run).
images_per_shard = section_values("tfrecords", {"images_per_shard": params.images_per_shard})["images_per_shard"]
plan = plan_shards(dict(zip(params.buckets, snakemake.input.manifests)), images_per_shard)
write_json(plan, snakemake.output.plan, sort_keys=True)
log.info("shard plan: %s", json.dumps(plan["splits"], sort_keys=True))
