"""Snakemake script: video-grouped, label-stratified train/val/test manifests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # workflow/ on sys.path
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.settings import SplitSettings
from quiltflow.splits import make_splits, write_splits
from quiltflow.tables import read_filtered

params = snakemake.params
settings = SplitSettings.from_config(
    {"fractions": dict(params.fractions), "use_source_val": params.use_source_val},
    seed=params.seed,
)
manifests, label_map, report = make_splits(read_filtered(snakemake.input.table), settings)
out = snakemake.output
write_splits(
    manifests,
    label_map,
    report,
    {"train": out.train, "val": out.val, "test": out.test},
    out.label_map,
    out.report,
)
