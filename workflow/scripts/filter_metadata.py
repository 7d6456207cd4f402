"""Snakemake script: filter the dataset metadata into results/metadata/filtered.parquet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.metadata import filter_metadata  # noqa: E402
from quiltflow.settings import FilterSettings  # noqa: E402
from quiltflow.tables import write_filtered  # noqa: E402

# The folder format has no metadata file, so the rule may leave that input out.
metadata = getattr(snakemake.input, "metadata", None) or None  # noqa: F821
table, report = filter_metadata(
    snakemake.params.format,  # noqa: F821
    metadata,
    snakemake.input.image_root,  # noqa: F821
    FilterSettings.from_config(snakemake.params.filters),  # noqa: F821
    dict(snakemake.params.columns or {}),  # noqa: F821
)
write_filtered(table, report, snakemake.output.table, snakemake.output.report)  # noqa: F821
