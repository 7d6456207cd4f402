# Defined only when the config has a pretraining entry (like pool_runs and evaluate_tta): the
# rule list then says which stages a run has.
if PRETRAININGS:

    rule pretrain_encoder:
        """Self-supervised pretraining of one backbone (pretraining.<name>) on the training images of
        one fold (with pool: unlabeled, also the unlabeled frames the fold may see): never an image
        a run using it validates or tests on. Resumable, one GPU job.
        """
        input:
            pool=pretrain_pool,
            unlabeled=pretrain_unlabeled_report,
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


# Defined only with pool: unlabeled (like pretrain_encoder): its buckets are then sharded too.
if UNLABELED_BUCKETS:

    rule split_unlabeled:
        """The frames the filters removed for their label only -> unlabeled buckets by the unit
        (video, joined by near-duplicates) they share with the split's buckets, and a report."""
        input:
            unpack(metadata_inputs),
            manifests=expand(paths.MANIFEST, split=BUCKETS),
        output:
            manifests=expand(paths.MANIFEST, split=UNLABELED_BUCKETS),
            frames=paths.UNLABELED_FRAMES,
            report=paths.UNLABELED_REPORT,
        log:
            "logs/split_unlabeled.log",
        conda:
            "../../envs/data.yaml"
        threads: 2  # as filter_metadata, whose filters it runs again
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            format=DATASET["format"],
            filters=config["filters"],
            columns=DATASET["columns"],
            folds=FOLDS,
            buckets=BUCKETS,
            unlabeled=UNLABELED_BUCKETS,
            code=script_code("split_unlabeled.py"),
        script:
            "../scripts/split_unlabeled.py"
