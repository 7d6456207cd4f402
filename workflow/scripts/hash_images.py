"""Snakemake script: hash every image the dataset names (results/metadata/image_hashes.parquet)."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

import time

from quiltflow.data.image_hashes import existing_images, hash_counts, hash_images, write_image_hashes

started = time.perf_counter()
metadata = getattr(snakemake.input, "metadata", None) or None
names = existing_images(snakemake.params.format, metadata, snakemake.input.image_root, snakemake.params.columns)
hashes, table = hash_images(names, snakemake.input.image_root, snakemake.threads)
write_image_hashes(table, snakemake.output.hashes)
seconds = time.perf_counter() - started
log.info(
    "hashed %s in %.1f s on %d threads (%.0f images/s)",
    hash_counts(hashes),
    seconds,
    snakemake.threads,
    len(names) / max(seconds, 1e-9),
)
