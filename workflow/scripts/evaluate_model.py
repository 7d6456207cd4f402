"""Rule evaluate_model: test-set predictions and the metrics JSON of one model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821  (workflow/ on sys.path)
from quiltflow.smk import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821

from quiltflow.evaluate import evaluate_model  # noqa: E402  (after logging: TF messages go to the log)

evaluate_model(
    model_path=snakemake.input.model,  # noqa: F821
    test_index_path=snakemake.input.test,  # noqa: F821
    manifest_path=snakemake.input.manifest,  # noqa: F821
    label_map_path=snakemake.input.label_map,  # noqa: F821
    info_path=snakemake.input.info,  # noqa: F821
    predictions_path=snakemake.output.predictions,  # noqa: F821
    metrics_path=snakemake.output.metrics,  # noqa: F821
    model_name=snakemake.params.model,  # noqa: F821
    top_k=snakemake.params.top_k,  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
