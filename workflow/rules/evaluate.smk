rule evaluate_model:
    """Predictions on the test shards, then every metric from scikit-learn on those predictions."""
    input:
        model="results/models/{model}/model.keras",
        info="results/models/{model}/train_info.json",
        test="results/tfrecords/test.index.json",
        manifest="results/splits/test.parquet",
        label_map="results/splits/label_map.json",
    output:
        predictions="results/predictions/{model}.parquet",
        metrics="results/metrics/{model}.json",
    log:
        "logs/evaluate_model/{model}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        model="{model}",
        top_k=config["evaluation"]["top_k"],
        batch_size=config["evaluation"]["batch_size"],
        code=script_code("evaluate_model.py"),
    script:
        "../scripts/evaluate_model.py"
