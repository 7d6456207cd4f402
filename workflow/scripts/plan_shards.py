"""Snakemake script of checkpoint plan_shards: rows and shard count per split."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quiltflow.jsonio import write_json  # noqa: E402
from quiltflow.settings import ShardSettings  # noqa: E402
from quiltflow.shards import plan_shards  # noqa: E402
from quiltflow.smk import setup_logging  # noqa: E402

log = setup_logging(snakemake.log[0])  # noqa: F821
params = snakemake.params  # noqa: F821
# The plan needs images_per_shard only; image_size is passed so the settings are this config's.
settings = ShardSettings.from_config(
    {"images_per_shard": params.images_per_shard}, image_size=params.image_size
)
plan = plan_shards(
    {split: snakemake.input[split] for split in ("train", "val", "test")},  # noqa: F821
    settings,
)
write_json(plan, snakemake.output.plan, sort_keys=True)  # noqa: F821
log.info("shard plan: %s", json.dumps(plan["splits"], sort_keys=True))
