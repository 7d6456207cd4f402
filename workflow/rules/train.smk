rule extract_features:
    """Frozen representations: pooled features computed once per representation and split, cached
    to disk and shared by the models of that representation (quiltflow.dag.representations)."""
    input:
        index=paths.SHARD_INDEX,
        weights=features_weights,
    output:
        features=paths.FEATURES,
    log:
        "logs/extract_features/{representation}{pretrain_fold}-{split}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
    params:
        settings=representation_settings,
        image_size=config["image_size"],
        seed=config["seed"],
        code=script_code("extract_features.py"),
    script:
        "../scripts/extract_features.py"


rule train_model:
    """One GPU job per model and run (fold x seed); resumable (BackupAndRestore) when rerun."""
    input:
        unpack(train_inputs),
    output:
        model=paths.MODEL,
        history=paths.HISTORY,
        info=paths.TRAIN_INFO,
    log:
        "logs/train_model/{model}{run}.log",
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
        seed=run_seed,
        # Cached features (and the frozen base re-attached to the head) come from this seed.
        feature_seed=config["seed"],
        train_buckets=lambda wc: run_split(wc, "train"),
        shards=config["tfrecords"],
        code=script_code("train_model.py"),
    script:
        "../scripts/train_model.py"
