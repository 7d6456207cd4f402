"""Rule predict_videos: one bag model (its runs averaged) on the videos of predict.images."""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import ShardSettings
from quiltflow.evaluation.predict_videos import predict_videos  # after logging: TF messages go to the log

params = snakemake.params
predict_videos(
    model_paths=as_paths(snakemake.input.models),
    images=snakemake.input.images,
    label_map_path=snakemake.input.label_map,
    train_info_paths=as_paths(snakemake.input.train_info),
    settings=ShardSettings.from_config(
        {"jpeg_quality": params.jpeg_quality, "framing": params.framing, "grid_size": params.grid_size},
        image_size=params.image_size,
    ),
    seed=params.seed,
    parquet_path=snakemake.output.parquet,
    csv_path=snakemake.output.csv,
    attention_path=snakemake.output.attention,
    top_k=params.top_frames,
    batch_size=params.batch_size,
    max_pixels=params.max_image_pixels,
    threads=snakemake.threads,
)
