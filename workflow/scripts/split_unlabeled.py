"""Snakemake script of rule split_unlabeled: the frames the filters removed for their label, put
in the unlabeled buckets of pretraining pool: unlabeled (quiltflow.data.unlabeled)."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import FilterSettings
from quiltflow.data.image_hashes import read_image_hashes
from quiltflow.data.metadata import label_removed_images
from quiltflow.data.unlabeled import split_unlabeled, write_unlabeled
from quiltflow.records.tables import read_filtered

params, out = snakemake.params, snakemake.output
filters = FilterSettings.from_config(params.filters)
# As in filter_metadata: the folder format has no metadata file; no hashes with near_duplicates off.
hashes = getattr(snakemake.input, "hashes", None)
image_hashes = read_image_hashes(hashes) if hashes else None
candidates, counts = label_removed_images(
    params.format,
    getattr(snakemake.input, "metadata", None) or None,
    snakemake.input.image_root,
    filters,
    dict(params.columns or {}),
    threads=snakemake.threads,
    image_hashes=image_hashes,
)
manifests = {name: read_filtered(path) for name, path in zip(params.buckets, snakemake.input.manifests)}
bucket_manifests, frames, report = split_unlabeled(candidates, counts, manifests, filters, params.folds, image_hashes)
write_unlabeled(bucket_manifests, frames, report, dict(zip(params.unlabeled, out.manifests)), out.frames, out.report)
