rule compare_models:
    """Every model, their ensemble and baselines: video-level (cluster bootstrap) intervals, paired
    video-level tests in one Holm family, reliability diagrams, plots (no TensorFlow)."""
    input:
        metrics=expand(POOLED_METRICS, model=FRAME_MODELS, variant=""),
        predictions=expand(POOLED_PREDICTIONS, model=FRAME_MODELS, variant=""),
        # evaluation.tta: each model's TTA variant, a row of its own ({model}+tta).
        tta_metrics=(
            expand(POOLED_METRICS, model=FRAME_MODELS, variant=paths.TTA_VARIANT) if TTA else []
        ),
        tta_predictions=(
            expand(POOLED_PREDICTIONS, model=FRAME_MODELS, variant=paths.TTA_VARIANT)
            if TTA
            else []
        ),
        # Training curves of each model's first run (fold 0, first seed).
        histories=expand(paths.HISTORY, model=FRAME_MODELS, run=RUN_SUFFIXES[0]),
        split_report=paths.SPLIT_REPORT,
        label_map=paths.LABEL_MAP,
    output:
        # Multi-label runs (filters.label_policy multilabel): average precision per label.
        **(
            {
                "ap_plot": report(
                    fill(paths.PLOT, name="per_label_ap"),
                    caption="../report/per_label_ap.rst",
                    category="Comparison",
                )
            }
            if MULTILABEL
            else {}
        ),
        json=fill(paths.COMPARISON, ext="json"),
        csv=fill(paths.COMPARISON, ext="csv"),
        md=report(
            fill(paths.COMPARISON, ext="md"),
            caption="../report/comparison.rst",
            category="Comparison",
        ),
        # The same document as HTML: the report's landing page (workflow.rst) shows it.
        html=report(
            fill(paths.COMPARISON, ext="html"),
            caption="../report/comparison.rst",
            category="Comparison",
        ),
        metrics_plot=report(
            fill(paths.PLOT, name="metrics"),
            caption="../report/metrics_plot.rst",
            category="Comparison",
        ),
        curves_plot=report(
            fill(paths.PLOT, name="training_curves"),
            caption="../report/training_curves.rst",
            category="Training",
        ),
        confusion=report(
            expand(fill(paths.PLOT, name="confusion_{model}"), model=FRAME_MODELS),
            caption="../report/confusion.rst",
            category="Confusion matrices",
        ),
        reliability=report(
            expand(fill(paths.PLOT, name="reliability_{model}"), model=FRAME_MODELS),
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
        models=FRAME_MODELS,
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


# Defined only with bag models (like pretrain_encoder): the rule list says which stages a run has.
if BAGS:

    rule compare_videos:
        """Frame models (mean frame probability per video) and bag models side by side at the video:
        video bootstrap intervals, paired video-level tests in one Holm family, the unit of each model.
        """
        input:
            metrics=expand(POOLED_METRICS, model=MODELS, variant=""),
            predictions=expand(POOLED_PREDICTIONS, model=MODELS, variant=""),
            split_report=paths.SPLIT_REPORT,
            label_map=paths.LABEL_MAP,
        output:
            json=fill(paths.COMPARISON_VIDEO, ext="json"),
            csv=fill(paths.COMPARISON_VIDEO, ext="csv"),
            md=fill(paths.COMPARISON_VIDEO, ext="md"),
        log:
            "logs/compare_videos.log",
        conda:
            "../../envs/report.yaml"
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            models=MODELS,
            seed=config["seed"],
            bootstrap_samples=config["comparison"]["bootstrap_samples"],
            permutations=config["comparison"]["permutations"],
            alpha=config["comparison"]["alpha"],
            # Multi-label runs: Quilt's pathology lists come from each video's narration (a caveat).
            narration_labels=DATASET["format"] == "quilt",
            code=script_code("compare_videos.py"),
        script:
            "../scripts/compare_videos.py"
