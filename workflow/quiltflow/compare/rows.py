"""What a comparison scores, either task: the loaded models and the rows built from them.

A :class:`Model` is one metrics document with its predictions; a :class:`Row` is anything scored on
the test set (a model, its ``{model}+tta`` variant, the ensemble, a baseline). Rows keep their
arrays; what the comparison document says of a row is a task's row dataclass (multiclass.ClassRow,
multilabel.LabelRow), written by its ``to_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

import numpy as np

from quiltflow.core.errors import UserError

ENSEMBLE = "ensemble"
MODEL_KIND = "model"
TTA_KIND = "tta"  # a model's test-time augmentation variant (rule evaluate_tta), row {model}+tta
TTA_SUFFIX = "+tta"


@dataclass(frozen=True)
class Model:
    """One evaluated model: its metrics document and predictions [seeds, images, ...] in image_id
    order. ``decisions``: the predicted class [S, n] (multiclass) or the decided labels [S, n, C]
    (multi-label, bool). ``tta_of``: for kind ``tta``, the name of the model it augments."""

    name: str
    kind: str
    doc: dict[str, Any]
    decisions: np.ndarray
    probs: np.ndarray
    tta_of: str | None = None


@dataclass(frozen=True)
class Row:
    """One scored line: probabilities and decisions as in :class:`Model`, the ``weights`` it is
    reported with, its task-specific ``extra`` fields (a dataclass with ``to_dict``), and whether
    it is ``comparable`` (tested against the other comparable rows and the baseline)."""

    name: str
    kind: str
    probs: np.ndarray
    decisions: np.ndarray
    weights: Any
    extra: Any
    comparable: bool
    tta_of: str | None = None


def model_rows(models: Sequence[Model], extra_of) -> list[Row]:
    """The models (and TTA variants) as rows; ``extra_of(doc)`` gives a model row's extra fields.
    Only plain models are comparable: a TTA row meets its own model alone."""
    return [
        Row(m.name, m.kind, m.probs, m.decisions, m.doc.get("weights"), extra_of(m.doc), m.kind == MODEL_KIND, m.tta_of)
        for m in models
    ]


def plain_models(models: Sequence[Model]) -> list[Model]:
    """The models without their TTA variants: what the ensemble averages and the plots show."""
    return [m for m in models if m.kind == MODEL_KIND]


def comparisons(rows: Sequence[Row], baseline: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(every two comparable rows, then each TTA row against its own model; each comparable row
    against ``baseline``). TTA rows meet only their own model: the pair measures the effect of TTA."""
    names = [r.name for r in rows if r.comparable]
    tta_pairs = [(r.name, r.tta_of) for r in rows if r.kind == TTA_KIND]
    return list(combinations(names, 2)) + tta_pairs, [(name, baseline) for name in names]


def mark_tta(models: Sequence[Model], n_plain: int, tta_metrics_paths: Sequence[str]) -> list[Model]:
    """The models after the first ``n_plain`` are their TTA variants, in the same order: each becomes
    a ``tta`` model of its own model (its metrics JSON must say model ``{model}+tta`` and ``tta``)."""
    plain, variants = list(models[:n_plain]), models[n_plain:]
    if variants and len(variants) != len(plain):
        raise UserError(f"compare_models: {len(variants)} TTA metrics files for {len(plain)} models")
    marked = []
    for model, variant, path in zip(plain, variants, tta_metrics_paths):
        expected = f"{model.name}{TTA_SUFFIX}"
        if variant.name != expected or "tta" not in variant.doc:
            raise UserError(
                f"metrics file {path}: model {variant.name!r} is not the test-time augmentation of "
                f"{model.name!r} (expected model {expected!r} and a tta key; re-run evaluate_tta)"
            )
        marked.append(replace(variant, kind=TTA_KIND, tta_of=model.name))
    return plain + marked
