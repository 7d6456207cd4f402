# Prediction on new images (issue 17): `snakemake predict --configfile my.yaml` with predict.images
# set. Not part of rule all. The images are only an input: no rule writes next to them.
PREDICT = config["predict"]
_unknown_predict_models = sorted(set(PREDICT["models"] or []) - set(MODELS))
if _unknown_predict_models:
    raise WorkflowError(
        f"config key predict.models: {_unknown_predict_models[0]!r} is not a model of this config "
        f"(models: {', '.join(MODELS)})"
    )
PREDICT_MODELS = PREDICT["models"] or MODELS


def predict_images_input(wildcards):
    """The predict.images folder or table; one line when it is unset or missing."""
    images = PREDICT["images"]
    if not images:
        raise WorkflowError(
            "snakemake predict: config key predict.images is not set; name a folder of images or "
            "a CSV/Parquet with a path column in your config (predict: {images: /path/to/images})"
        )
    if not Path(images).exists():
        raise WorkflowError(f"config key predict.images: {images} does not exist")
    return images


def predict_models_input(wildcards):
    """Every run's model.keras of one model (one holdout run: just results/models/{model}/)."""
    return [f"results/models/{wildcards.model}{run}/model.keras" for run in RUN_SUFFIXES]


def predict_targets(wildcards):
    predict_images_input(wildcards)
    return expand("results/predict/{model}.{ext}", model=PREDICT_MODELS, ext=("parquet", "csv"))


rule predict_images:
    """New images through the shards' preparation and one trained model (its runs averaged)."""
    input:
        images=predict_images_input,
        models=predict_models_input,
        label_map="results/splits/label_map.json",
    output:
        parquet="results/predict/{model}.parquet",
        csv="results/predict/{model}.csv",
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
