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
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        "results/comparison.md",
