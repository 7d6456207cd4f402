"""Rule explain_attention: the attention gallery of one bag model (quiltflow.evaluation.attention_gallery)."""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.evaluation.attention_gallery import explain_attention

explain_attention(
    attention_path=snakemake.input.attention,
    predictions_path=snakemake.input.predictions,
    index_paths=as_paths(snakemake.input.test),
    label_map_path=snakemake.input.label_map,
    gallery_path=snakemake.output.gallery,
    index_path=snakemake.output.index,
    model_name=snakemake.params.model,
    videos_per_class=snakemake.params.videos_per_class,
    seed=snakemake.params.seed,
)
