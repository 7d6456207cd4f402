# Quilt-1M histopathology classification: filter -> split -> shard -> train -> evaluate -> compare.
# The default config runs an embedded synthetic demo offline; see README.md for real data.
import os


# Absolute, so `snakemake -s path/to/Snakefile --directory elsewhere` finds the defaults too.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/metadata.smk"
include: "workflow/rules/tfrecords.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/encoders.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/explain.smk"


# Per-model outputs are targets too: Snakemake (>= 7.7) does not regenerate a missing
# intermediate file while the files after it are up to date, so a model added to the
# config, or a deleted metrics file, is only picked up when it is requested directly.
rule all:
    default_target: True
    input:
        all_targets,


# Stage targets (use these, not --until, for stages after the plan_shards checkpoint).
rule tfrecords:
    input:
        expand(paths.SHARD_INDEX, split=BUCKETS),


rule train:
    input:
        model_runs(paths.MODEL),


rule evaluate:
    input:
        metrics_targets(),


# Grad-CAM galleries (explain.smk); not in rule all, to keep the demo fast.
rule explain:
    input:
        expand(paths.EXPLAIN_DIR, model=EXPLAIN_MODELS),
        expand(paths.ATTENTION_GALLERY, model=EXPLAIN_BAGS),


# Linear probe and k-NN of every frozen representation at label budgets (probe.smk); not in rule all.
rule probe:
    input:
        probe_targets(),
