"""Rule compare_videos: frame and bag models compared at the video (quiltflow.compare.video_unit)."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.compare.video_unit import compare_videos

params = snakemake.params
compare_videos(
    list(snakemake.input.metrics),
    list(snakemake.input.predictions),
    snakemake.input.split_report,
    snakemake.input.label_map,
    seed=params.seed,
    bootstrap_samples=params.bootstrap_samples,
    permutations=params.permutations,
    alpha=params.alpha,
    narration_labels=params.narration_labels,
    json_path=snakemake.output.json,
    csv_path=snakemake.output.csv,
    md_path=snakemake.output.md,
)
