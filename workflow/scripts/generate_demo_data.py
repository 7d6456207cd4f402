"""Snakemake script: write the embedded synthetic demo (Quilt-format lookup + JPEG tiles)."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.data.demo import generate_demo

generate_demo(
    snakemake.output.lookup,
    snakemake.output.images,
    seed=int(snakemake.params.seed),
    images_per_class=int(snakemake.params.images_per_class),
    tile_size=int(snakemake.params.tile_size),
    classes=snakemake.params.classes,  # None = the six default classes
)
