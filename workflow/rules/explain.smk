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


# Defined only with bag models (like pretrain_encoder): the rule list says which stages a run has.
if BAGS:

    rule explain_attention:
        """Bag models: the most and least attended frames of test videos (first run), with weights."""
        input:
            unpack(explain_attention_inputs),
        output:
            gallery=report(
                fill(paths.ATTENTION_GALLERY, model=BAG_MODEL),
                caption="../report/explain_attention.rst",
                category="Explanations",
                subcategory="{model}",
            ),
            index=fill(paths.ATTENTION_GALLERY_INDEX, model=BAG_MODEL),
        log:
            "logs/explain_attention/{model}.log",
        conda:
            "../../envs/train.yaml"
        threads: config["resources"]["train_threads"]
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            model="{model}",
            videos_per_class=EXPLAIN["images_per_class"],
            seed=config["seed"] if EXPLAIN["seed"] is None else EXPLAIN["seed"],
            code=script_code("explain_attention.py"),
        script:
            "../scripts/explain_attention.py"
