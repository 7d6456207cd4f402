"""The learning task of a run, one home: single-label (``multiclass``) or ``multilabel``.

``filters.label_policy`` decides it (``primary`` -> one label per image; ``multilabel`` -> the
multi-hot of the image's pathology list); ``split_manifests`` records it in ``label_map.json``
and every later stage reads it from there (``read_task``), never from the config.
"""

from __future__ import annotations

import os

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"
TASKS = (MULTICLASS, MULTILABEL)
# filters.label_policy -> task (the schema's enum lists the policies).
_TASK_OF_POLICY = {"primary": MULTICLASS, "multilabel": MULTILABEL}


def task_of_policy(policy: str) -> str:
    """The task a ``filters.label_policy`` value makes."""
    if policy not in _TASK_OF_POLICY:
        raise UserError(f"config key filters.label_policy: {policy!r} is not one of {', '.join(_TASK_OF_POLICY)}")
    return _TASK_OF_POLICY[policy]


def read_task(label_map_path: str | os.PathLike) -> str:
    """The task recorded in ``label_map.json`` (a map without ``task`` predates multi-label: multiclass)."""
    task = read_json(label_map_path, "label map").get("task", MULTICLASS)
    if task not in TASKS:
        raise UserError(f"{label_map_path}: task {task!r} is not one of {', '.join(TASKS)}")
    return task


def head_activation(task: str) -> str:
    """The output layer's activation: one distribution over the classes, or one independent
    probability per label."""
    return "sigmoid" if task == MULTILABEL else "softmax"
