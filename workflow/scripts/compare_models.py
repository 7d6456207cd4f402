"""Rule compare_models: baselines, ensemble, video-level intervals and tests, tables and plots (no TensorFlow)."""

from pathlib import Path

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.compare.run import compare_models

document = compare_models(
    list(snakemake.input.metrics),
    list(snakemake.input.predictions),
    list(snakemake.input.histories),
    snakemake.input.split_report,
    snakemake.input.label_map,
    seed=snakemake.params.seed,
    bootstrap_samples=snakemake.params.bootstrap_samples,
    alpha=snakemake.params.alpha,
    permutations=snakemake.params.permutations,
    ensemble=bool(snakemake.params.ensemble),
    synthetic=bool(snakemake.params.synthetic),  # demo data: a caveat line
    narration_labels=bool(snakemake.params.narration_labels),  # Quilt lists (multi-label caveat)
    tta_metrics_paths=list(snakemake.input.tta_metrics),  # evaluation.tta: {model}+tta rows
    tta_predictions_paths=list(snakemake.input.tta_predictions),
    json_path=snakemake.output.json,
    csv_path=snakemake.output.csv,
    md_path=snakemake.output.md,
    html_path=snakemake.output.html,
    metrics_plot=snakemake.output.metrics_plot,
    curves_plot=snakemake.output.curves_plot,
    confusion_plots=list(snakemake.output.confusion),
    reliability_plots=list(snakemake.output.reliability),
    ap_plot=snakemake.output.get("ap_plot"),  # multi-label runs only (compare.smk adds it)
)
print(Path(snakemake.output.md).read_text(encoding="utf-8"))  # the table, either task
for caveat in document["caveats"]:
    print(f"Caveat: {caveat}")
