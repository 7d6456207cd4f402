"""Rule probe_representation: linear probe and k-NN of one frozen representation at every label budget, fold and seed."""

from quiltflow.core.smk import setup_logging

log = setup_logging(snakemake.log[0])

from quiltflow.evaluation.probe import ProbeSettings, run_protocol_files
from threadpoolctl import threadpool_limits

# NumPy's BLAS and scikit-learn use the job's threads, not every core of the node.
with threadpool_limits(limits=snakemake.threads):
    result = run_protocol_files(
        snakemake.params.runs,
        list(snakemake.input.manifests),
        snakemake.input.label_map,
        ProbeSettings(
            fractions=tuple(snakemake.params.fractions),
            k=int(snakemake.params.k),
            temperature=float(snakemake.params.temperature),
            c_grid=tuple(snakemake.params.c_grid),
            max_iter=int(snakemake.params.max_iter),
        ),
        predictions_path=snakemake.output.predictions,
        budgets_path=snakemake.output.budgets,
    )
for budget in result.budgets:
    log.info(
        "fold %s seed %s fraction %s: %s videos, %s images, C %s",
        budget["fold"],
        budget["seed"],
        budget["fraction"],
        budget["n_videos"],
        budget["n_images"],
        budget["c"],
    )
