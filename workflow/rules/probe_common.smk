# Input functions of probe.smk (kept apart: `snakemake --lint` wants functions and rules in
# separate files, and common.smk belongs to the other stages).
PROBE = config["probe"]


def probe_feature_paths(representation):
    """{fold: {bucket: features .npz}} of a representation (per fold for a per-fold pretrained
    backbone; common.smk's model_features_pattern, asked of any model of the representation)."""
    model = REPRESENTATION_MODEL[representation]
    return {
        run.fold: {
            bucket: fill(model_features_pattern(model, run.fold), split=bucket)
            for bucket in BUCKETS
        }
        for run in RUNS
    }


def probe_inputs(wildcards):
    by_fold = probe_feature_paths(wildcards.representation)
    return {
        "features": sorted({p for buckets in by_fold.values() for p in buckets.values()}),
        "manifests": expand(paths.MANIFEST, split=BUCKETS),
        "label_map": paths.LABEL_MAP,
    }


def probe_runs(wildcards):
    """Each run's fold, seed, buckets and feature files (the script needs no DAG logic)."""
    by_fold = probe_feature_paths(wildcards.representation)
    return [
        {
            "fold": run.fold,
            "seed": run.seed,
            "buckets": run_buckets(run.fold, FOLDS),
            "features": by_fold[run.fold],
        }
        for run in RUNS
    ]


def probe_targets():
    """The summary (and its plot) when the run has a frozen representation; else nothing to do."""
    if not REPRESENTATIONS:
        return []
    return expand(paths.PROBE_SUMMARY, ext=["json", "csv", "md"]) + [
        fill(paths.PLOT, name="label_efficiency")
    ]
