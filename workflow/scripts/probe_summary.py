"""Rule probe_summary: intervals, paired video-level tests and the label-efficiency plot of the probe stage (no TensorFlow)."""

from pathlib import Path

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.compare.probe_summary import summarise_probe

representations = list(snakemake.params.representations)
summarise_probe(
    dict(zip(representations, snakemake.input.predictions)),  # expand() keeps their order
    dict(zip(representations, snakemake.input.budgets)),
    snakemake.input.label_map,
    seed=snakemake.params.seed,
    bootstrap_samples=snakemake.params.bootstrap_samples,
    permutations=snakemake.params.permutations,
    alpha=snakemake.params.alpha,
    outputs={key: snakemake.output[key] for key in ("json", "csv", "md", "plot")},
)
print(Path(snakemake.output.md).read_text(encoding="utf-8"))
