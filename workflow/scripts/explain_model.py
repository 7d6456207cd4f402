"""Rule explain_model: Grad-CAM galleries of one model's first run (quiltflow.evaluation.explain)."""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.evaluation.explain import explain_model  # after logging: TF messages go to the log

explain_model(
    model_path=snakemake.input.model,
    predictions_path=snakemake.input.predictions,
    test_index_paths=as_paths(snakemake.input.test),
    label_map_path=snakemake.input.label_map,
    out_dir=snakemake.output.galleries,
    model_name=snakemake.params.model,
    architecture_name=snakemake.params.architecture,
    images_per_class=snakemake.params.images_per_class,
    mistakes=snakemake.params.mistakes,
    seed=snakemake.params.seed,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
)
