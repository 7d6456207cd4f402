rule evaluate_model:
    """Predictions on the test shards, then every metric from scikit-learn on those predictions."""
    input:
        unpack(evaluate_inputs),
    output:
        predictions=fill(paths.PREDICTIONS, variant="", model=FRAME_MODEL),
        metrics=fill(paths.METRICS, variant="", model=FRAME_MODEL),
    log:
        "logs/evaluate_model/{model}{run}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        model="{model}",
        fold=lambda wc: run_of(wc.run, FOLDS, SEEDS).fold,
        seed=run_seed,
        folds=FOLDS,
        top_k=config["evaluation"]["top_k"],
        batch_size=config["evaluation"]["batch_size"],
        code=script_code("evaluate_model.py"),
    script:
        "../scripts/evaluate_model.py"


if TTA:

    rule evaluate_tta:
        """Test-time augmentation: predictions on the same test shards as evaluate_model, each image
        (grid cell) as the mean probability over its eight dihedral views; metrics of {model}+tta.
        """
        input:
            unpack(evaluate_inputs),
        output:
            predictions=fill(paths.PREDICTIONS, variant=paths.TTA_VARIANT, model=FRAME_MODEL),
            metrics=fill(paths.METRICS, variant=paths.TTA_VARIANT, model=FRAME_MODEL),
        log:
            "logs/evaluate_tta/{model}{run}.log",
        conda:
            "../../envs/train.yaml"
        threads: config["resources"]["train_threads"]
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=60,
        params:
            model="{model}",
            fold=lambda wc: run_of(wc.run, FOLDS, SEEDS).fold,
            seed=run_seed,
            folds=FOLDS,
            top_k=config["evaluation"]["top_k"],
            batch_size=config["evaluation"]["batch_size"],
            tta=config["evaluation"]["tta"],
            code=script_code("evaluate_model.py"),
        script:
            "../scripts/evaluate_model.py"


# Defined only with bag models (like pretrain_encoder): the rule list says which stages a run has.
if BAGS:

    rule evaluate_bag_model:
        """Bag models (unit video): each test video predicted from all its cached frame features;
        video-level predictions, each frame's attention, metrics with unit video."""
        input:
            unpack(evaluate_bag_inputs),
        output:
            predictions=fill(paths.PREDICTIONS, variant="", model=BAG_MODEL),
            metrics=fill(paths.METRICS, variant="", model=BAG_MODEL),
            attention=fill(paths.ATTENTION, model=BAG_MODEL),
        log:
            "logs/evaluate_bag_model/{model}{run}.log",
        conda:
            "../../envs/train.yaml"
        threads: config["resources"]["train_threads"]
        resources:
            mem_mb=8000,
            runtime=60,
        params:
            model="{model}",
            fold=lambda wc: run_of(wc.run, FOLDS, SEEDS).fold,
            seed=run_seed,
            folds=FOLDS,
            top_k=config["evaluation"]["top_k"],
            batch_size=config["evaluation"]["batch_size"],
            image_size=config["image_size"],
            code=script_code("evaluate_bag_model.py"),
        script:
            "../scripts/evaluate_bag_model.py"


if BAGS and not SINGLE_RUN:

    rule pool_attention:
        """A bag model's attention tables of every fold and seed in one table."""
        input:
            [fill(paths.ATTENTION, run=run) for run in RUN_SUFFIXES],
        output:
            fill(paths.ATTENTION, run="", model=BAG_MODEL),
        log:
            "logs/pool_attention/{model}.log",
        conda:
            "../../envs/report.yaml"
        params:
            code=script_code("pool_attention.py"),
        script:
            "../scripts/pool_attention.py"


if not SINGLE_RUN:

    rule pool_runs:
        """Every fold's and seed's test predictions of one model (or of its TTA variant, {variant}
        = .tta) in one table; pooled metrics."""
        input:
            predictions=[fill(paths.PREDICTIONS, run=run) for run in RUN_SUFFIXES],
            metrics=[fill(paths.METRICS, run=run) for run in RUN_SUFFIXES],
            label_map=paths.LABEL_MAP,
            folds=paths.FOLDS_TABLE,
        output:
            predictions=fill(paths.PREDICTIONS, run=""),
            metrics=fill(paths.METRICS, run=""),
        log:
            "logs/pool_runs/{model}{variant}.log",
        conda:
            "../../envs/report.yaml"
        params:
            model=pooled_model_name,
            folds=FOLDS,
            seeds=SEEDS,
            top_k=config["evaluation"]["top_k"],
            code=script_code("pool_runs.py"),
        script:
            "../scripts/pool_runs.py"
