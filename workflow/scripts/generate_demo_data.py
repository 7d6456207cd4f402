"""Snakemake script: write the embedded synthetic demo (Quilt-format lookup + JPEG tiles)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.demo import generate_demo  # noqa: E402

generate_demo(
    snakemake.output.lookup,  # noqa: F821
    snakemake.output.images,  # noqa: F821
    seed=int(snakemake.params.seed),  # noqa: F821
    images_per_class=int(snakemake.params.images_per_class),  # noqa: F821
    tile_size=int(snakemake.params.tile_size),  # noqa: F821
    classes=snakemake.params.classes,  # noqa: F821  (None = the six default classes)
)
