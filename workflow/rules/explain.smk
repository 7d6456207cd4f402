# Grad-CAM explanations (quiltflow.evaluation.explain), requested by the target rule `explain` only: rule all
# does not ask for them, so `make demo` stays within its time budget. Inputs: common.smk.


rule explain_model:
    """Grad-CAM galleries of one model: per class (correct and wrong test images) and its most
    confident mistakes."""
    input:
        unpack(explain_inputs),
    output:
        # One folder per model rather than one declared file per class: the classes are only
        # known once split_manifests has written label_map.json, after the DAG is built, and
        # making that rule a checkpoint would re-plan every downstream job for a side target.
        # The folder's content is still fixed: quiltflow.evaluation.explain.gallery_files(label map).
        galleries=report(
            directory(paths.EXPLAIN_DIR),
            patterns=["{name}.png"],
            caption="../report/explain.rst",
            category="Explanations",
            subcategory="{model}",
        ),
    log:
        "logs/explain_model/{model}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        model="{model}",
        architecture=lambda wc: config["models"][wc.model]["architecture"],
        images_per_class=EXPLAIN["images_per_class"],
        mistakes=EXPLAIN["mistakes"],
        seed=config["seed"] if EXPLAIN["seed"] is None else EXPLAIN["seed"],
        batch_size=config["evaluation"]["batch_size"],
        code=script_code("explain_model.py"),
    script:
        "../scripts/explain_model.py"
