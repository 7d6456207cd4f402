# Frozen representations measured from their cached features (quiltflow.evaluation.probe): a
# linear probe and weighted k-NN at label budgets of the training videos, every (fold, seed) run;
# then intervals and paired video-level tests (quiltflow.compare.probe_summary). Target `probe`
# only (not rule all): no image is decoded, but it is an extra stage a demo run does not need.
include: "probe_common.smk"


rule probe_representation:
    """Linear probe and k-NN of one frozen representation (its cached features) at every label fraction, fold and seed (one job:
    the fits are small next to the job start)."""
    input:
        unpack(probe_inputs),
    output:
        predictions=paths.PROBE,
        budgets=paths.PROBE_BUDGETS,
    log:
        "logs/probe_representation/{representation}.log",
    conda:
        "../../envs/report.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        runs=probe_runs,
        fractions=PROBE["label_fractions"],
        k=PROBE["k"],
        temperature=PROBE["temperature"],
        c_grid=PROBE["c_grid"],
        max_iter=PROBE["max_iter"],
        code=script_code("probe_representation.py"),
    script:
        "../scripts/probe_representation.py"


rule probe_summary:
    """Balanced accuracy, accuracy, macro F1 and AUC per representation, method and fraction with
    video-bootstrap intervals; paired video swap tests in one Holm family; label-efficiency plot."""
    input:
        predictions=expand(paths.PROBE, representation=sorted(REPRESENTATIONS)),
        budgets=expand(paths.PROBE_BUDGETS, representation=sorted(REPRESENTATIONS)),
        label_map=paths.LABEL_MAP,
    output:
        json=fill(paths.PROBE_SUMMARY, ext="json"),
        csv=fill(paths.PROBE_SUMMARY, ext="csv"),
        md=fill(paths.PROBE_SUMMARY, ext="md"),
        plot=report(
            fill(paths.PLOT, name="label_efficiency"),
            caption="../report/label_efficiency.rst",
            category="Comparison",
        ),
    log:
        "logs/probe_summary.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        representations=sorted(REPRESENTATIONS),
        seed=config["seed"],
        bootstrap_samples=config["comparison"]["bootstrap_samples"],
        alpha=config["comparison"]["alpha"],
        permutations=config["comparison"]["permutations"],
        code=script_code("probe_summary.py"),
    script:
        "../scripts/probe_summary.py"
