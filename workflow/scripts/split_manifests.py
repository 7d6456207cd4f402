"""Snakemake script: video-grouped, label-stratified train/val/test manifests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.settings import SplitSettings  # noqa: E402
from quiltflow.splits import make_splits, write_splits  # noqa: E402
from quiltflow.tables import read_filtered  # noqa: E402

params = snakemake.params  # noqa: F821
settings = SplitSettings.from_config(
    {"fractions": dict(params.fractions), "use_source_val": params.use_source_val},
    seed=params.seed,
)
manifests, label_map, report = make_splits(
    read_filtered(snakemake.input.table), settings  # noqa: F821
)
out = snakemake.output  # noqa: F821
write_splits(
    manifests,
    label_map,
    report,
    {"train": out.train, "val": out.val, "test": out.test},
    out.label_map,
    out.report,
)
