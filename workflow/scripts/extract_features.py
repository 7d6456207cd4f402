"""Snakemake script: cache one frozen representation's features of one split (rule ``extract_features``).

The settings are the representation's extractor and weights only (``quiltflow.dag.representations``);
the rest, the batch size included, are the schema's defaults, whichever models share the cache.
"""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import ModelSettings
from quiltflow.dag.pretraining import resolve_model_weights
from quiltflow.models.features import extract_features, save_features
from quiltflow.models.pipeline import make_dataset
from quiltflow.models.runtime import configure_runtime

settings, _ = resolve_model_weights(
    ModelSettings.from_config(snakemake.params.settings, snakemake.wildcards.representation),
    as_paths(snakemake.input.weights),
)
configure_runtime(snakemake.threads)
ds = make_dataset(snakemake.input.index, settings.batch_size, training=False, with_ids=True)
data = extract_features(
    ds,
    image_size=snakemake.params.image_size,
    weights=settings.weights,
    batch_size=settings.batch_size,
    seed=snakemake.params.seed,
    architecture=settings.architecture,
)
save_features(snakemake.output.features, data, image_size=snakemake.params.image_size, weights=settings.weights)
log.info("features %s for %d images -> %s", data["features"].shape, len(data["labels"]), snakemake.output.features)
