"""Snakemake script: video-grouped, label-stratified train/val/test manifests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.metadata import read_filtered  # noqa: E402
from quiltflow.splits import make_splits, write_splits  # noqa: E402

manifests, label_map, report = make_splits(
    read_filtered(snakemake.input.table),  # noqa: F821
    fractions=dict(snakemake.params.fractions),  # noqa: F821
    seed=int(snakemake.params.seed),  # noqa: F821
    use_source_val=bool(snakemake.params.use_source_val),  # noqa: F821
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
