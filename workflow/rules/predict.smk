# Prediction on new images (issue 17) and, with a bag model, on new videos (issue 27):
# `snakemake predict --configfile my.yaml` with predict.images set. Not part of rule all. The
# images are only an input: no rule writes next to them. The input functions and predict.models
# check are in common.smk.


rule predict_images:
    """New images through the shards' preparation and one trained model (its runs averaged)."""
    input:
        images=predict_images_input,
        models=predict_models_input,
        train_info=predict_train_info_input,
        label_map=paths.LABEL_MAP,
    output:
        parquet=fill(paths.PREDICT, model=FRAME_MODEL, ext="parquet"),
        csv=fill(paths.PREDICT, model=FRAME_MODEL, ext="csv"),
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


# Defined only with bag models (as evaluate_bag_model): the rule list says which stages a run has.
if BAGS:

    rule predict_videos:
        """New videos (the sub-folders of predict.images, or its group column) through a bag model: the
        shards' preparation, the frozen representation its runs were trained on, one row per video.
        """
        input:
            images=predict_images_input,
            models=predict_models_input,
            train_info=predict_train_info_input,
            weights=predict_weights_input,
            label_map=paths.LABEL_MAP,
        output:
            parquet=fill(paths.PREDICT, model=BAG_MODEL, ext="parquet"),
            csv=fill(paths.PREDICT, model=BAG_MODEL, ext="csv"),
            attention=fill(paths.PREDICT_ATTENTION, model=BAG_MODEL),
        log:
            "logs/predict_videos/{model}.log",
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
            # The random weights of a weights: none representation (as rule extract_features).
            seed=config["seed"],
            top_frames=PREDICT["top_frames"],
            batch_size=PREDICT["batch_size"],
            max_image_pixels=PREDICT["max_image_pixels"],
            code=script_code("predict_videos.py"),
        script:
            "../scripts/predict_videos.py"


# Target rule: every model of predict.models (default: all) on predict.images.
rule predict:
    input:
        predict_targets,
