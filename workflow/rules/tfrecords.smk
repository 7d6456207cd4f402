checkpoint plan_shards:
    """Rows and shard count per split (the one checkpoint: shard jobs are scheduled from it)."""
    input:
        manifests=expand(paths.MANIFEST, split=SHARDED_BUCKETS),
    output:
        plan=paths.SHARD_PLAN,
    log:
        "logs/plan_shards.log",
    conda:
        "../../envs/data.yaml"
    params:
        images_per_shard=config["tfrecords"]["images_per_shard"],
        buckets=SHARDED_BUCKETS,
        code=script_code("plan_shards.py"),
    script:
        "../scripts/plan_shards.py"


rule shard_tfrecords:
    """One small CPU job per shard: decode, resize, re-encode, write atomically; skips are reported."""
    input:
        manifest=paths.MANIFEST,
        image_root=DATASET["image_root"],
    output:
        shard=paths.SHARD,
        report=paths.SHARD_REPORT,
    log:
        "logs/shard_tfrecords/{split}-{index}-of-{total}.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        shard_index=lambda wc: int(wc.index),
        num_shards=lambda wc: int(wc.total),
        image_size=config["image_size"],
        jpeg_quality=config["tfrecords"]["jpeg_quality"],
        framing=config["tfrecords"]["framing"],
        grid_size=config["tfrecords"]["grid_size"],
        code=script_code("shard_tfrecords.py"),
    script:
        "../scripts/shard_tfrecords.py"


rule index_tfrecords:
    """Per-split index: shard names, record counts, bytes, checksums (training reads counts here)."""
    input:
        shards=lambda wc: shard_paths(wc.split),
        reports=lambda wc: shard_paths(wc.split, ".report.json"),
        label_map=paths.LABEL_MAP,
    output:
        index=paths.SHARD_INDEX,
    log:
        "logs/index_tfrecords/{split}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        split="{split}",
        image_size=config["image_size"],
        code=script_code("index_tfrecords.py"),
    script:
        "../scripts/index_tfrecords.py"
