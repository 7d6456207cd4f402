rule hash_images:
    """Every image the dataset names -> its near-duplicate hashes (once per dataset, not per filter change)."""
    input:
        unpack(dataset_inputs),
    output:
        hashes=paths.IMAGE_HASHES,
    log:
        "logs/hash_images.log",
    conda:
        "../../envs/data.yaml"
    threads: 8  # decoding releases the GIL: threads scale over cores; capped by --cores
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        format=DATASET["format"],
        columns=DATASET["columns"],
        code=script_code("hash_images.py"),
    script:
        "../scripts/hash_images.py"


rule filter_metadata:
    """Lookup table + image root -> one row per kept image, and a report of every dropped row."""
    input:
        unpack(metadata_inputs),
    output:
        table=paths.FILTERED,
        report=report(
            paths.FILTER_REPORT,
            caption="../report/filter_report.rst",
            category="Data",
        ),
    log:
        "logs/filter_metadata.log",
    conda:
        "../../envs/data.yaml"
    threads: 2  # the root listing and id ranking run beside the lookup's parsing
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        format=DATASET["format"],
        filters=config["filters"],
        columns=DATASET["columns"],
        code=script_code("filter_metadata.py"),
    script:
        "../scripts/filter_metadata.py"


rule split_manifests:
    """Stratified, video-grouped manifests (train/val/test, or k folds) with a seeded, stable row order."""
    input:
        table=paths.FILTERED,
    output:
        manifests=expand(paths.MANIFEST, split=BUCKETS),
        label_map=paths.LABEL_MAP,
        report=paths.SPLIT_REPORT,
        folds=paths.FOLDS_TABLE,
    log:
        "logs/split_manifests.log",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        seed=config["seed"],
        fractions=config["splits"]["fractions"],
        use_source_val=config["splits"]["use_source_val"],
        folds=FOLDS,
        buckets=BUCKETS,
        task=TASK,
        code=script_code("split_manifests.py"),
    script:
        "../scripts/split_manifests.py"
