"""Running one pretraining job (rule ``pretrain_encoder``): the method, then pretrain_info.json.

Apart from ``quiltflow.dag.pretraining`` (the plan, read by the Snakefile and by every model job) so
that a change to a method's code reruns the pretraining jobs and the models using them, not
every model: code triggers follow imports (``quiltflow.dag.codehash``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import write_json
from quiltflow.core.paths import PRETRAIN_INFO_FILE
from quiltflow.core.settings import PretrainSettings

METHODS = ("simclr",)  # the schema's enum of pretraining.<name>.method (a test checks)


def _method(name: str):
    """The function running ``name``, with the signature of ``quiltflow.models.simclr.pretrain_simclr``.

    A new method (e.g. image-caption contrastive on Quilt's captions) is one branch here, its
    module, and its name in ``METHODS`` and the schema.
    """
    if name == "simclr":
        from quiltflow.models.simclr import pretrain_simclr

        return pretrain_simclr
    raise UserError(f"pretraining method {name!r}: not implemented; choose one of {list(METHODS)}")


def pretrain_from_files(
    index_paths: Sequence[str | Path],
    *,
    out_dir: str | Path,
    settings: PretrainSettings,
    buckets: Sequence[str],
    seed: int,
    threads: int | None = None,
    pool_facts: dict | None = None,
) -> dict:
    """Pretrain on the pool's index JSONs, write ``pretrain_info.json`` beside the weights
    (``pool_facts``: pool: unlabeled's counts for this fold, quiltflow.data.unlabeled.read_fold_facts)."""
    info = _method(settings.method)(
        list(index_paths),
        Path(out_dir),
        backbone=settings.backbone,
        image_size=settings.image_size,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        temperature=settings.temperature,
        projection_dim=settings.projection_dim,
        seed=seed,
        threads=threads,
    )
    info.update(name=settings.name, pool=settings.pool, pool_buckets=list(buckets), settings=settings.as_dict())
    info.update(pool_facts or {})
    write_json(info, Path(out_dir) / PRETRAIN_INFO_FILE)
    return info
