"""Snakemake script: fetch keras.applications' ResNet50 ImageNet weights (rule ``fetch_imagenet_weights``)."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.dag.imagenet import fetch_imagenet

info, source = fetch_imagenet(snakemake.output.weights, snakemake.output.info)
log.info(
    "weights: imagenet: %s from %s, sha256 %s, licence %s",
    snakemake.output.weights,
    source,
    info.sha256,
    info.licence,
)
