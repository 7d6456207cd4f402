"""Snakemake script: fetch one published encoder (rule ``fetch_encoder``) and write encoder_info.json."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.dag.encoders import EncoderSpec, fetch_encoder

spec = EncoderSpec.from_config(snakemake.params.settings, snakemake.wildcards.encoder)
info = fetch_encoder(spec, snakemake.params.checkpoint, snakemake.output.info)
log.info(
    "encoder %s: %s (%s %s) in %s, sha256 %s, licence %s",
    info.name,
    info.preset,
    info.format,
    info.architecture,
    info.checkpoint_dir,
    info.sha256,
    info.licence or "not stated",
)
