"""Rule compare_models: baselines, bootstrap CIs, McNemar tests, tables and plots (no TensorFlow)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.compare import compare_models, markdown_table  # noqa: E402

document = compare_models(
    list(snakemake.input.metrics),  # noqa: F821
    list(snakemake.input.predictions),  # noqa: F821
    list(snakemake.input.histories),  # noqa: F821
    snakemake.input.split_report,  # noqa: F821
    snakemake.input.label_map,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    bootstrap_samples=snakemake.params.bootstrap_samples,  # noqa: F821
    alpha=snakemake.params.alpha,  # noqa: F821
    synthetic=bool(snakemake.params.synthetic),  # noqa: F821  (demo data: a caveat line)
    json_path=snakemake.output.json,  # noqa: F821
    csv_path=snakemake.output.csv,  # noqa: F821
    md_path=snakemake.output.md,  # noqa: F821
    metrics_plot=snakemake.output.metrics_plot,  # noqa: F821
    curves_plot=snakemake.output.curves_plot,  # noqa: F821
    confusion_plots=list(snakemake.output.confusion),  # noqa: F821
)
print(markdown_table(document))
for caveat in document["caveats"]:
    print(f"Caveat: {caveat}")
