rule compare_models:
    """Every model, their ensemble and baselines: video-level (cluster bootstrap) intervals, paired
    video-level tests in one Holm family, reliability diagrams, plots (no TensorFlow)."""
    input:
        metrics=expand("results/metrics/{model}.json", model=MODELS),
        predictions=expand("results/predictions/{model}.parquet", model=MODELS),
        # evaluation.tta: each model's TTA variant, a row of its own ({model}+tta).
        tta_metrics=expand("results/metrics/{model}.tta.json", model=MODELS) if TTA else [],
        tta_predictions=(
            expand("results/predictions/{model}.tta.parquet", model=MODELS) if TTA else []
        ),
        # Training curves of each model's first run (fold 0, first seed).
        histories=expand(
            "results/models/{model}{run}/history.csv", model=MODELS, run=RUN_SUFFIXES[0]
        ),
        split_report="results/splits/split_report.json",
        label_map="results/splits/label_map.json",
    output:
        # Multi-label runs (filters.label_policy multilabel): average precision per label.
        **(
            {
                "ap_plot": report(
                    "results/plots/per_label_ap.png",
                    caption="../report/per_label_ap.rst",
                    category="Comparison",
                )
            }
            if MULTILABEL
            else {}
        ),
        json="results/comparison.json",
        csv="results/comparison.csv",
        md=report(
            "results/comparison.md", caption="../report/comparison.rst", category="Comparison"
        ),
        # The same document as HTML: the report's landing page (workflow.rst) shows it.
        html=report(
            "results/comparison.html",
            caption="../report/comparison.rst",
            category="Comparison",
        ),
        metrics_plot=report(
            "results/plots/metrics.png",
            caption="../report/metrics_plot.rst",
            category="Comparison",
        ),
        curves_plot=report(
            "results/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        confusion=report(
            expand("results/plots/confusion_{model}.png", model=MODELS),
            caption="../report/confusion.rst",
            category="Confusion matrices",
        ),
        reliability=report(
            expand("results/plots/reliability_{model}.png", model=MODELS),
            caption="../report/reliability.rst",
            category="Calibration",
        ),
    log:
        "logs/compare_models.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        # The model list as a param: adding a model reruns the comparison through the params
        # trigger (Snakemake's input-set trigger does not fire for it in this DAG).
        models=MODELS,
        tta=config["evaluation"]["tta"],
        seed=config["seed"],
        bootstrap_samples=config["comparison"]["bootstrap_samples"],
        alpha=config["comparison"]["alpha"],
        permutations=config["comparison"]["permutations"],
        ensemble=config["comparison"]["ensemble"],
        synthetic=DEMO,
        # Quilt's pathology lists come from each video's narration (a multi-label caveat).
        narration_labels=DATASET["format"] == "quilt",
        code=script_code("compare_models.py"),
    script:
        "../scripts/compare_models.py"
