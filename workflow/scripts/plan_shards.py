"""Snakemake script of checkpoint plan_shards: rows and shard count per split."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quiltflow.jsonio import write_json
from quiltflow.settings import ShardSettings
from quiltflow.shards import plan_shards
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])
params = snakemake.params
# The plan needs images_per_shard only; image_size is passed so the settings are this config's.
settings = ShardSettings.from_config({"images_per_shard": params.images_per_shard}, image_size=params.image_size)
plan = plan_shards(
    dict(zip(params.buckets, snakemake.input.manifests)),
    settings,
)
write_json(plan, snakemake.output.plan, sort_keys=True)
log.info("shard plan: %s", json.dumps(plan["splits"], sort_keys=True))
