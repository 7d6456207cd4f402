"""Rules evaluate_model and evaluate_tta (params.tta): test-set predictions and the metrics JSON of one model."""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.evaluation.evaluate import evaluate_model  # after logging: TF messages go to the log

evaluate_model(
    model_path=snakemake.input.model,
    test_index_path=as_paths(snakemake.input.test),
    manifest_path=as_paths(snakemake.input.manifest),
    label_map_path=snakemake.input.label_map,
    info_path=snakemake.input.info,
    predictions_path=snakemake.output.predictions,
    metrics_path=snakemake.output.metrics,
    model_name=snakemake.params.model,
    top_k=snakemake.params.top_k,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
    fold=snakemake.params.fold,
    seed=snakemake.params.seed,
    folds=snakemake.params.folds,
    tta=snakemake.params.get("tta", "none"),
)
