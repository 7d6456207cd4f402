"""Snakemake script: cache frozen ResNet50 features of one split (rule ``extract_features``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.data import make_dataset  # noqa: E402
from quiltflow.features import extract_features, save_features  # noqa: E402
from quiltflow.runtime import configure_runtime  # noqa: E402
from quiltflow.settings import ModelSettings  # noqa: E402

settings = ModelSettings.from_config(snakemake.params.settings, snakemake.wildcards.model)  # noqa: F821
configure_runtime(snakemake.threads)  # noqa: F821
ds = make_dataset(snakemake.input.index, settings.batch_size, training=False, with_ids=True)  # noqa: F821
data = extract_features(
    ds,
    image_size=snakemake.params.image_size,  # noqa: F821
    weights=settings.weights,
    batch_size=settings.batch_size,
    seed=snakemake.params.seed,  # noqa: F821
)
save_features(snakemake.output.features, data, image_size=snakemake.params.image_size, weights=settings.weights)  # noqa: F821
log.info("features %s for %d images -> %s", data["features"].shape, len(data["labels"]), snakemake.output.features)  # noqa: F821
