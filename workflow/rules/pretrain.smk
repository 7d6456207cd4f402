# Defined only when the config has a pretraining entry (like pool_runs and evaluate_tta): the
# rule list then says which stages a run has.
if PRETRAININGS:

    rule pretrain_encoder:
        """Self-supervised pretraining of one backbone (pretraining.<name>) on the training images of
        one fold: never an image a run using it validates or tests on. Resumable, one GPU job.
        """
        input:
            pool=pretrain_pool,
        output:
            weights=pretrained_file("{pretrain}", "{fold}"),
            history=pretrained_file("{pretrain}", "{fold}", paths.HISTORY_FILE),
            info=pretrained_file("{pretrain}", "{fold}", paths.PRETRAIN_INFO_FILE),
        log:
            "logs/pretrain_encoder/{pretrain}{fold}.log",
        conda:
            "../../envs/train.yaml"
        threads: config["resources"]["train_threads"]
        resources:
            gpu=1,
            mem_mb=config["resources"]["train_mem_mb"],
            runtime=config["resources"]["train_runtime"],
        params:
            name="{pretrain}",
            settings=lambda wc: config["pretraining"][wc.pretrain],
            image_size=config["image_size"],
            buckets=lambda wc: pool_buckets(
                config["pretraining"][wc.pretrain]["pool"], fold_of_suffix(wc.fold), FOLDS
            ),
            seed=config["seed"],
            code=script_code("pretrain_encoder.py"),
        script:
            "../scripts/pretrain_encoder.py"
