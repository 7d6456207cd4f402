"""Rule evaluate_bag_model: video-level predictions, attention and metrics of one bag model's run."""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.evaluation.bag_evaluate import evaluate_bag_model  # after logging: TF messages go to the log

evaluate_bag_model(
    model_path=snakemake.input.model,
    features_paths=as_paths(snakemake.input.features),
    manifest_path=as_paths(snakemake.input.manifest),
    label_map_path=snakemake.input.label_map,
    info_path=snakemake.input.info,
    predictions_path=snakemake.output.predictions,
    attention_path=snakemake.output.attention,
    metrics_path=snakemake.output.metrics,
    model_name=snakemake.params.model,
    top_k=snakemake.params.top_k,
    batch_size=snakemake.params.batch_size,
    fold=snakemake.params.fold,
    seed=snakemake.params.seed,
    folds=snakemake.params.folds,
    image_size=snakemake.params.image_size,
)
