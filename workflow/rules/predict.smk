# Prediction on new images (issue 17): `snakemake predict --configfile my.yaml` with predict.images
# set. Not part of rule all. The images are only an input: no rule writes next to them. The input
# functions and predict.models check are in common.smk.


rule predict_images:
    """New images through the shards' preparation and one trained model (its runs averaged)."""
    input:
        images=predict_images_input,
        models=predict_models_input,
        train_info=predict_train_info_input,
        label_map=paths.LABEL_MAP,
    output:
        parquet=fill(paths.PREDICT, ext="parquet"),
        csv=fill(paths.PREDICT, ext="csv"),
    log:
        "logs/predict_images/{model}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        image_size=config["image_size"],
        jpeg_quality=config["tfrecords"]["jpeg_quality"],
        framing=config["tfrecords"]["framing"],
        grid_size=config["tfrecords"]["grid_size"],
        batch_size=PREDICT["batch_size"],
        max_image_pixels=PREDICT["max_image_pixels"],
        code=script_code("predict_images.py"),
    script:
        "../scripts/predict_images.py"


# Target rule: every model of predict.models (default: all) on predict.images.
rule predict:
    input:
        predict_targets,
