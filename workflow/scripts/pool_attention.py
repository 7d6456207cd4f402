"""Rule pool_attention: a bag model's attention tables of every run in one table."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.records.attention import pool_attention

pool_attention(list(snakemake.input), snakemake.output[0])
