"""Rule explain_model: Grad-CAM heat maps of a saved model over a seeded choice of test images.

Grad-CAM (Selvaraju et al. 2017): the gradients of a class score with respect to a convolutional
layer's activations, averaged over the spatial positions, weight that layer's channels; the ReLU
of the weighted sum is the heat map, upsampled to the image and scaled to [0, 1]. The score is
the class's logit when the model ends in a softmax Dense layer (as every single-label
architecture does) or in a sigmoid one (multi-label models, issue 16: the label's logit, not its
probability: sigmoid is increasing, so the probability's gradients are the logit's times one
positive number per image and give the same normalised map, except that they vanish in float32
where the sigmoid saturates), the output itself otherwise. The target layer comes from the architecture registry
(``Architecture.gradcam_layer``); for the ResNet models it lies inside nested models, so the
model is cut in two there (``split_at``): activations = front(images), scores = back(activations).

Multi-label predictions (a ``true_multi_hot`` column) change which images are examples: a
correct example of class c has c among its true labels and c as its top-scoring label; a
mistake's top-scoring label is not among its true labels (``select_examples``).

TensorFlow and Keras are imported inside the functions that need them: naming and selection
(``gallery_files``, ``select_examples``, ``top_mistakes``) are importable without them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from quiltflow.core.errors import UserError
from quiltflow.core.tasks import MULTICLASS, MULTILABEL

log = logging.getLogger("quiltflow.evaluation.explain")

MISTAKES_FILE = "mistakes.png"
INDEX_FILE = "index.json"
# Probabilities recomputed here may differ from evaluate_model's by float noise (other batch
# sizes, GPU vs CPU); more than this says the images or the model are not the evaluated ones.
PROBABILITY_TOLERANCE = 1e-3
MULTI_HOT_COLUMN = "true_multi_hot"  # multi-label predictions only (the contract of issue 16)
# Final Dense activations whose pre-activation is the class score (the logit).
SCORE_ACTIVATIONS = ("softmax", "sigmoid")


# --- file names --------------------------------------------------------------------------------


def file_stem(name: str) -> str:
    """A class name as a file name: every run of characters other than letters, digits, '.', '-'
    and '_' becomes one '_' ("Soft tissue" -> "Soft_tissue"), without leading/trailing '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_.")


def gallery_files(class_names: Sequence[str]) -> list[str]:
    """The gallery file of each class (label-map order), then ``mistakes.png``.

    A class whose name has no safe character becomes ``class<index>``; two classes with the same
    file name (or one called "mistakes") are a one-line UserError rather than one overwriting
    the other.
    """
    names = [f"{file_stem(c) or f'class{i}'}.png" for i, c in enumerate(class_names)]
    seen: dict[str, str] = {MISTAKES_FILE.lower(): "the mistakes gallery"}
    for cls, name in zip(class_names, names):
        other = seen.setdefault(name.lower(), f"class {cls!r}")
        if other != f"class {cls!r}":
            raise UserError(f"explain: class {cls!r} would be written to {name}, the file of {other}")
    return [*names, MISTAKES_FILE]


# --- which images --------------------------------------------------------------------------------


def _prediction_frame(predictions: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """image_id, true_label, pred_label, prob (of the predicted class), sorted by image_id; with
    multi-label predictions also ``true_labels`` (the label indices of ``true_multi_hot``).

    ``task`` None: multi-label when the ``true_multi_hot`` column is there; a given task that the
    columns contradict is a UserError."""
    if predictions["image_id"].duplicated().any():
        dup = predictions.loc[predictions["image_id"].duplicated(), "image_id"].iloc[0]
        raise UserError(f"explain: image_id {dup} appears more than once in the predictions (one run's expected)")
    multi = MULTI_HOT_COLUMN in predictions.columns
    if task is not None and (task == MULTILABEL) != multi:
        has = "has" if multi else "has no"
        raise UserError(f"explain: the label map's task is {task} but the predictions {has} {MULTI_HOT_COLUMN} column")
    probs = np.stack(predictions["probabilities"].to_numpy())
    frame = pd.DataFrame(
        {
            "image_id": predictions["image_id"].astype(str).to_numpy(),
            "true_label": predictions["true_label"].astype(int).to_numpy(),
            "pred_label": predictions["pred_label"].astype(int).to_numpy(),
        }
    )
    frame["prob"] = probs[np.arange(len(frame)), frame["pred_label"].to_numpy()].astype(float)
    if multi:
        hot = np.stack(predictions[MULTI_HOT_COLUMN].to_numpy()) if len(frame) else np.zeros(probs.shape)
        if hot.shape != probs.shape:
            raise UserError(
                f"explain: {MULTI_HOT_COLUMN} is {hot.shape[1:]} per image, probabilities {probs.shape[1:]}"
            )
        frame["true_labels"] = [[int(k) for k in np.flatnonzero(row)] for row in hot]
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True)


def _is_right(frame: pd.DataFrame) -> np.ndarray:
    """Whether each top-scoring label is right: the true label, or among the true labels (multi-label)."""
    if "true_labels" in frame.columns:
        return np.array([p in t for p, t in zip(frame["pred_label"], frame["true_labels"])], dtype=bool)
    return (frame["pred_label"] == frame["true_label"]).to_numpy()


def _has_class(frame: pd.DataFrame, cls: int) -> np.ndarray:
    """Whether class ``cls`` is each image's true label (or one of its true labels, multi-label)."""
    if "true_labels" in frame.columns:
        return np.array([cls in t for t in frame["true_labels"]], dtype=bool)
    return (frame["true_label"] == cls).to_numpy()


def select_examples(
    predictions: pd.DataFrame, num_classes: int, per_class: int, seed: int, task: str | None = None
) -> pd.DataFrame:
    """Up to ``per_class`` correctly and up to ``per_class`` wrongly predicted test images of
    every true class, drawn with ``seed`` (one stream per class and kind).

    The draw depends only on the set of rows, not their order (rows are sorted by image_id
    first). Returns image_id, true_label, pred_label, prob, kind ("correct"/"wrong"), by class,
    kind, then image_id.

    Multi-label predictions (``true_multi_hot``; ``task`` None infers it from the columns): the
    examples of class c are the images with c among their true labels, correct when the
    top-scoring label is c, wrong when it is none of their true labels (an image whose top label
    is another of its true labels is an example of that label only; a wrong image can be an
    example of each of its labels). Adds ``true_labels`` and ``gallery_class`` (= c).
    """
    frame = _prediction_frame(predictions, task)
    multi = "true_labels" in frame.columns
    right = _is_right(frame)
    chosen = []
    for cls in range(num_classes):
        has = _has_class(frame, cls)
        for k, kind in enumerate(("correct", "wrong")):
            pool = frame[has & ((frame["pred_label"] == cls).to_numpy() if kind == "correct" else ~right)]
            rng = np.random.default_rng([int(seed), cls, k])
            take = rng.choice(len(pool), size=min(per_class, len(pool)), replace=False)
            part = pool.iloc[np.sort(take)].assign(kind=kind)
            chosen.append(part.assign(gallery_class=cls) if multi else part)
    return pd.concat(chosen, ignore_index=True)


def top_mistakes(predictions: pd.DataFrame, count: int, task: str | None = None) -> pd.DataFrame:
    """The ``count`` wrong predictions with the highest predicted-class probability (ties by id);
    multi-label: top-scoring label not among the true labels."""
    frame = _prediction_frame(predictions, task)
    wrong = frame[~_is_right(frame)]
    wrong = wrong.sort_values(["prob", "image_id"], ascending=[False, True], kind="stable")
    return wrong.head(int(count)).assign(kind="mistake").reset_index(drop=True)


def read_test_images(index_paths: Any, image_ids: Sequence[str], batch_size: int = 64) -> dict[str, np.ndarray]:
    """The uint8 images of ``image_ids`` as the model saw them: decoded from the test shards by the
    tf.data reader (``quiltflow.models.pipeline``). With grid framing an id names a source image and its
    first cell record is returned. A missing id is a UserError."""
    from quiltflow.models.pipeline import make_dataset

    wanted, found = set(image_ids), {}
    for images, _, ids in make_dataset(index_paths, batch_size, training=False, with_ids=True):
        for image, raw in zip(images.numpy(), ids.numpy()):
            image_id = raw.decode("utf-8")
            if image_id in wanted and image_id not in found:
                found[image_id] = image
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"explain: image_id {missing[0]} is not in the test shards ({len(missing)} missing)")
    return found


# --- Grad-CAM ----------------------------------------------------------------------------------------

Fn = Callable[[Any], Any]


def last_conv_layer(model: Any) -> str:
    """Name of the last Conv2D layer of ``model``'s own (top-level) layers."""
    import keras

    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not names:
        raise UserError(f"explain: model {model.name} has no Conv2D layer at its top level; set its gradcam_layer")
    return names[-1]


def target_path(model: Any, architecture_name: str) -> tuple[str, ...]:
    """The Grad-CAM target of a model of a registered architecture, as a path of layer names."""
    from quiltflow.core.architectures import architecture

    return architecture(architecture_name).gradcam_layer or (last_conv_layer(model),)


def _submodel(inputs: Any, outputs: Any) -> Fn:
    """A callable from ``inputs`` to ``outputs`` (symbolic tensors of one graph); identity if equal."""
    import keras

    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]  # a one-input model takes a tensor, not a one-element list
    if outputs is inputs:
        return lambda x: x
    return keras.Model(inputs, outputs)


def _call_tensors(model: Any, layer: Any) -> tuple[Any, Any]:
    """The (input, output) tensors of the one call of nested ``layer`` inside ``model``'s graph."""
    nodes = [node for node in layer._inbound_nodes if node.operation is layer]
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1 or len(nodes[0].output_tensors) != 1:
        raise UserError(f"explain: nested layer {layer.name} of {model.name} must be called once, on one tensor")
    return nodes[0].input_tensors[0], nodes[0].output_tensors[0]


def split_at(model: Any, path: Sequence[str]) -> tuple[Fn, Fn]:
    """(front, back) with front(images) = the activations of the layer at ``path`` (names from
    ``model`` down through nested models) and back(activations) = the model's output.

    At the level of the target layer both halves are sub-models of that level's graph; at each
    level above, the nested model holding the target is replaced by its own two halves, with
    the layers before it added to the front and the layers after it to the back.
    """
    name, *rest = path
    try:
        layer = model.get_layer(name)
    except ValueError:
        raise UserError(
            f"explain: model {model.name} has no layer {name!r} (Grad-CAM target {'/'.join(path)})"
        ) from None
    if not rest:  # a nested model as the target (a published encoder): its output where it is called
        out = _call_tensors(model, layer)[1] if hasattr(layer, "layers") else layer.output
        return _submodel(model.inputs, out), _submodel(out, model.outputs[0])
    inner_in, inner_out = _call_tensors(model, layer)
    before, after = _submodel(model.inputs, inner_in), _submodel(inner_out, model.outputs[0])
    inner_front, inner_back = split_at(layer, rest)
    return (lambda x: inner_front(before(x))), (lambda a: after(inner_back(a)))


def _final_dense(model: Any) -> Any:
    """The model's final Dense layer if it applies a softmax or a sigmoid (looking into nested
    models), else None."""
    from quiltflow.models.builders import output_layer

    layer, activation = output_layer(model)
    return layer if activation in SCORE_ACTIVATIONS else None


def heat_maps(acts: Any, grads: Any, image_size: int) -> np.ndarray:
    """ReLU(sum_k alpha_k A_k), alpha_k = mean gradient of channel k; bilinear to the image size,
    each map divided by its maximum (an all-zero map stays zero)."""
    import tensorflow as tf

    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, [image_size, image_size], method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.clip(np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0), 0.0, 1.0)


def class_gradients(
    model: Any, images: Any, path: Sequence[str], class_index: Sequence[int] | None = None
) -> tuple[Any, Any, np.ndarray]:
    """(activations [B, h, w, K] at ``path``, d score / d activations, probabilities [B, C]).

    The score of image b is the logit of ``class_index[b]`` (default: the predicted class, the
    top-scoring label of a multi-label model). Probabilities: the softmax of the logits, or each
    label's sigmoid for a sigmoid head.
    """
    import keras
    import tensorflow as tf

    front, back = split_at(model, path)
    dense = _final_dense(model)
    acts = tf.cast(front(tf.convert_to_tensor(images)), tf.float32)
    if dense is not None:
        activation, dense.activation = dense.activation, keras.activations.linear  # logits; restored below
        to_probs = tf.nn.sigmoid if activation.__name__ == "sigmoid" else tf.nn.softmax
    try:
        with tf.GradientTape() as tape:
            tape.watch(acts)
            scores = tf.cast(back(acts), tf.float32)
            probs = to_probs(scores) if dense is not None else scores
            classes = tf.argmax(probs, axis=1) if class_index is None else tf.constant(class_index, tf.int64)
            chosen = tf.gather(scores, classes, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, acts)
    finally:
        if dense is not None:
            dense.activation = activation
    return acts, grads, probs.numpy()


def gradcam(
    model: Any, images: np.ndarray, path: Sequence[str], class_index: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(heat maps [B, S, S] in [0, 1], probabilities [B, C]) of ``images`` (uint8 [B, S, S, 3]).

    Each map explains ``class_index[b]`` (default: the predicted class) at the layer ``path``.
    """
    acts, grads, probs = class_gradients(model, images, path, class_index)
    return heat_maps(acts, grads, int(images.shape[1])), probs


# --- the rule ------------------------------------------------------------------------------------------


def explain_rows(
    model: Any, path: Sequence[str], table: pd.DataFrame, images: dict, batch_size: int
) -> tuple[pd.DataFrame, list[int]]:
    """(``table`` (selected rows) with ``image``, ``heat`` (of the evaluated predicted class) and
    ``model_prob`` (that class's probability recomputed here) per row, the target's grid [h, w])."""
    stacked = np.stack([images[i] for i in table["image_id"]]) if len(table) else np.zeros((0, 1, 1, 3), np.uint8)
    heats, probs, grid = [], [], []
    for start in range(0, len(table), batch_size):
        classes = table["pred_label"].to_numpy()[start : start + batch_size]
        acts, grads, prob = class_gradients(model, stacked[start : start + batch_size], path, classes)
        heats.extend(heat_maps(acts, grads, stacked.shape[1]))
        probs.extend(prob[np.arange(len(classes)), classes])
        grid = [int(acts.shape[1]), int(acts.shape[2])]
    return table.assign(image=list(stacked), heat=heats, model_prob=np.asarray(probs, dtype=float)), grid


def _check_probabilities(rows: pd.DataFrame, model_name: str) -> float:
    """Largest gap between the evaluated and the recomputed probabilities; a warning above tolerance."""
    gap = float(np.abs(rows["prob"] - rows["model_prob"]).max()) if len(rows) else 0.0
    if gap > PROBABILITY_TOLERANCE:
        log.warning(
            "%s: recomputed probabilities differ from evaluate_model's by up to %.4f "
            "(expected with grid framing, where predictions average a source image's cells)",
            model_name,
            gap,
        )
    return gap


def _load(model_path: str) -> Any:
    import keras

    import quiltflow.models.builders  # noqa: F401  (registers ResNet50Preprocess for deserialisation)

    return keras.models.load_model(model_path, compile=False)


def explain_model(
    *,
    model_path: str,
    predictions_path: str,
    test_index_paths: Any,
    label_map_path: str,
    out_dir: str,
    model_name: str,
    architecture_name: str,
    images_per_class: int,
    mistakes: int,
    seed: int,
    batch_size: int = 64,
    threads: int = 1,
) -> dict[str, Any]:
    """Write ``out_dir/<class file>.png`` per class (``gallery_files``), ``mistakes.png`` and
    ``index.json`` (what was explained); return the index."""
    from pathlib import Path

    from quiltflow.core.jsonio import read_label_map, write_json
    from quiltflow.core.tasks import read_task
    from quiltflow.evaluation.gallery import class_gallery, mistakes_gallery
    from quiltflow.models.runtime import set_thread_pools

    set_thread_pools(max(1, int(threads)))  # before TensorFlow runs anything
    class_names, task = read_label_map(label_map_path), read_task(label_map_path)
    files = gallery_files(class_names)
    predictions = pd.read_parquet(predictions_path)
    chosen = select_examples(predictions, len(class_names), int(images_per_class), int(seed), task)
    worst = top_mistakes(predictions, int(mistakes), task)
    table = pd.concat([chosen, worst], ignore_index=True)
    images = read_test_images(test_index_paths, sorted(set(table["image_id"])), int(batch_size))
    model = _load(model_path)
    path = target_path(model, architecture_name)
    rows, grid = explain_rows(model, path, table, images, int(batch_size))
    gap = _check_probabilities(rows, model_name)
    out = Path(out_dir)
    layer = "/".join(path)
    # The grid in every title: a 1 x 1 target (ResNet50 at 32 px) gives a uniform map.
    score = "the top-scoring label's logit" if task == MULTILABEL else "the predicted class"
    where = f"Grad-CAM of {score} at {layer}, a {'x'.join(map(str, grid)) or '-'} grid"
    for cls, name in enumerate(class_names):
        title = f"{model_name}: test images of class {name}\n({where})"
        class_gallery(rows[rows["kind"] != "mistake"], class_names, cls, title, out / files[cls])
    title = f"{model_name}: the {len(worst)} most confident mistakes\n({where})"
    mistakes_gallery(rows[rows["kind"] == "mistake"], class_names, title, out / files[-1])
    index = _index(model_name, layer, seed, class_names, files, rows, gap) | {"target_grid": grid}
    if task != MULTICLASS:
        index["task"] = task
    write_json(index, out / INDEX_FILE)
    log.info("%s: %d images explained at %s into %d galleries", model_name, len(rows), layer, len(files))
    return index


def _index(model_name, layer, seed, class_names, files, rows: pd.DataFrame, gap: float) -> dict[str, Any]:
    """index.json: the target layer, the seed, each class's file and every explained image
    (multi-label: also its ``true_labels`` and, for a class example, its ``gallery_class``)."""
    explained = [
        {
            "image_id": str(r.image_id),
            "kind": str(r.kind),
            "true_label": int(r.true_label),
            "pred_label": int(r.pred_label),
            "prob": round(float(r.prob), 6),
        }
        | _multilabel_entry(r)
        for r in rows.itertuples()
    ]
    return {
        "model": model_name,
        "target_layer": layer,
        "seed": int(seed),
        "files": {"classes": dict(zip(class_names, files[:-1])), "mistakes": files[-1]},
        "explained": explained,
        "max_probability_difference": round(gap, 6),
    }


def _multilabel_entry(row: Any) -> dict[str, Any]:
    """The multi-label fields of one explained image (none for single-label rows)."""
    entry: dict[str, Any] = {}
    if isinstance(getattr(row, "true_labels", None), list):
        entry["true_labels"] = [int(k) for k in row.true_labels]
    gallery_class = getattr(row, "gallery_class", None)
    if gallery_class is not None and not pd.isna(gallery_class):
        entry["gallery_class"] = int(gallery_class)
    return entry
