rule extract_features:
    """Frozen-backbone models: pooled backbone features computed once per split, cached to disk."""
    input:
        index="results/tfrecords/{split}.index.json",
        weights=model_weights,
    output:
        features="results/features/{model}/{split}.npz",
    log:
        "logs/extract_features/{model}-{split}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
    params:
        settings=model_settings,
        image_size=config["image_size"],
        seed=config["seed"],
        code=script_code("extract_features.py"),
    script:
        "../scripts/extract_features.py"


rule train_model:
    """One GPU job per model; resumable (BackupAndRestore) when a killed job is rerun."""
    input:
        unpack(train_inputs),
    output:
        model="results/models/{model}/model.keras",
        history="results/models/{model}/history.csv",
        info="results/models/{model}/train_info.json",
    log:
        "logs/train_model/{model}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
    params:
        model="{model}",
        settings=model_settings,
        image_size=config["image_size"],
        seed=config["seed"],
        code=script_code("train_model.py"),
    script:
        "../scripts/train_model.py"
