"""Rule predict_images: one trained model (its runs averaged) on the images of predict.images."""

from quiltflow.core.smk import as_paths, setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.core.settings import ShardSettings
from quiltflow.evaluation.predict import predict_images  # after logging: TF messages go to the log

predict_images(
    model_paths=as_paths(snakemake.input.models),
    images=snakemake.input.images,
    label_map_path=snakemake.input.label_map,
    train_info_paths=as_paths(snakemake.input.train_info),
    settings=ShardSettings.from_config(
        {
            "jpeg_quality": snakemake.params.jpeg_quality,
            "framing": snakemake.params.framing,
            "grid_size": snakemake.params.grid_size,
        },
        image_size=snakemake.params.image_size,
    ),
    parquet_path=snakemake.output.parquet,
    csv_path=snakemake.output.csv,
    batch_size=snakemake.params.batch_size,
    max_pixels=snakemake.params.max_image_pixels,
    threads=snakemake.threads,
)
