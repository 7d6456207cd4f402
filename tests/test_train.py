"""Training: settings, class weights, outputs, determinism, failure injection, kill + resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
sys.path.insert(0, str(WORKFLOW))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.core.settings import ModelSettings  # noqa: E402
from quiltflow.models.train import class_weights_from_counts, train_model  # noqa: E402

SIZE = 32
CONTRACT_KEYS = {
    "model",
    "architecture",
    "weights",
    "epochs_run",
    "best_epoch",
    "train_seconds",
    "num_train",
    "num_val",
    "image_size",
    "seed",
    "device",
}


def tiny_datasets(n=24, batch=8, seed=0):
    # tf.data's shuffle order depends on the global seed too: fix it, as a fresh process would.
    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=seed).batch(batch)
    val = tf.data.Dataset.from_tensor_slices((x[:9], y[:9])).batch(batch)
    return train, val


def cnn_settings(**extra):
    return {"architecture": "custom_cnn", "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, **extra}


def test_class_weights_are_balanced():
    weights = class_weights_from_counts([10, 30, 0, 20], 4)
    assert weights == pytest.approx({0: 2.0, 1: 2 / 3, 2: 1.0, 3: 1.0})
    # Sample-weighted mean is 1: the loss scale is unchanged.
    assert (10 * weights[0] + 30 * weights[1] + 20 * weights[3]) / 60 == pytest.approx(1.0)
    assert class_weights_from_counts({1: 5, 0: 5}, 2) == {0: 1.0, 1: 1.0}
    with pytest.raises(UserError, match="outside"):
        class_weights_from_counts({3: 1}, 2)
    with pytest.raises(UserError, match="empty"):
        class_weights_from_counts([0, 0], 2)


def settings_of(values, name="m"):
    return ModelSettings.from_config(values, name)


def test_settings_defaults_per_architecture():
    s = settings_of({"architecture": "resnet50_finetune", "epochs": 4, "batch_size": 8, "learning_rate": 1e-3}, "ft")
    assert s.finetune_learning_rate == pytest.approx(1e-4)
    assert s.warmup_epochs == 1 and s.patience == 3 and s.class_weights is True
    assert s.augment is True and s.weights == "imagenet" and s.dropout == 0.0
    frozen = settings_of({"architecture": "resnet50_frozen", "epochs": 4}, "fr")
    assert frozen.augment is False and frozen.weights == "imagenet"
    cnn = settings_of(cnn_settings(), "cnn")
    assert cnn.weights == "none" and cnn.dropout == 0.25 and cnn.augment is True
    # null (the config schema's default) means "the architecture's default".
    nulls = settings_of(cnn_settings(augment=None, finetune_learning_rate=None, dropout=None), "cnn")
    assert nulls.augment is True and nulls.finetune_learning_rate == pytest.approx(1e-4)
    assert settings_of(cnn_settings(weights=None), "cnn").weights == "none"
    assert settings_of(cnn_settings(architecture="resnet50_finetune", weights=None), "ft").weights == "imagenet"


def test_settings_defaults_are_the_schema_and_registry_ones():
    """Nothing but the schema and the architecture registry supplies a default."""
    from quiltflow.core.architectures import REGISTRY
    from quiltflow.core.settings import schema_default

    for name, spec in REGISTRY.items():
        s = settings_of({"architecture": name}, "m")
        assert s.epochs == schema_default("models.*", "epochs") and s.patience == schema_default("models.*", "patience")
        assert (s.dropout, s.augment) == (spec.default_dropout, spec.default_augment)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"learnig_rate": 1}, r"^config key models\.m: Additional properties are not allowed"),
        ({"epochs": 0}, r"^config key models\.m\.epochs: 0 is less than the minimum of 1"),
        ({"dropout": 0.95}, r"^config key models\.m\.dropout: 0\.95 is greater than the maximum of 0\.9"),
        ({"batch_size": "8"}, r"^config key models\.m\.batch_size"),
        ({"learning_rate": -1}, r"^config key models\.m\.learning_rate"),
        ({"finetune_learning_rate": 0}, r"^config key models\.m\.finetune_learning_rate"),
        ({"class_weights": "yes"}, r"^config key models\.m\.class_weights"),
        ({"architecture": "vgg"}, r"^config key models\.m\.architecture"),
        ({"weights": "imagenet"}, r"^config key models\.m\.weights: custom_cnn trains from scratch"),
        ({"architecture": "resnet50_frozen", "augment": True}, r"^config key models\.m\.augment"),
        ({"architecture": "resnet50_finetune", "warmup_epochs": 2}, r"^config key models\.m\.warmup_epochs"),
    ],
)
def test_bad_settings_name_the_key(bad, match):
    with pytest.raises(UserError, match=match) as err:
        settings_of(cnn_settings(**bad), "m")
    assert "\n" not in str(err.value)


def test_missing_architecture_is_named():
    with pytest.raises(UserError, match=r"^config key models\.m: 'architecture' is a required property"):
        settings_of({"epochs": 1}, "m")


def test_inject_failure_raises_before_writing(tmp_path):
    train, val = tiny_datasets()
    with pytest.raises(RuntimeError, match="inject_failure"):
        train_model(
            train,
            val,
            out_dir=tmp_path / "m",
            settings=settings_of(cnn_settings(inject_failure=True)),
            num_classes=3,
            image_size=SIZE,
            seed=0,
        )
    assert not (tmp_path / "m" / "model.keras").exists()


def read_history(out_dir):
    import csv

    with open(Path(out_dir) / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_custom_cnn_training_writes_contract_outputs(tmp_path):
    train, val = tiny_datasets()
    info = train_model(
        train,
        val,
        out_dir=tmp_path,
        settings=settings_of(cnn_settings(epochs=3, patience=5), "cnn"),
        num_classes=3,
        image_size=SIZE,
        seed=3,
    )
    on_disk = json.loads((tmp_path / "train_info.json").read_text())
    assert on_disk == json.loads(json.dumps(info))
    assert CONTRACT_KEYS <= set(on_disk)
    assert on_disk["epochs_run"] == 3 and on_disk["num_train"] == 24 and on_disk["num_val"] == 9
    history = read_history(tmp_path)
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    val_losses = [float(r["val_loss"]) for r in history]
    assert on_disk["best_epoch"] == int(np.argmin(val_losses)) + 1
    assert (tmp_path / "checkpoints" / "best.keras").is_file()
    assert not (tmp_path / "backup").exists()  # finished runs leave no resume state behind
    # model.keras is the best epoch: its val loss reproduces the best history value.
    model = keras.models.load_model(tmp_path / "model.keras")
    model.compile(loss="sparse_categorical_crossentropy")
    assert model.evaluate(val, verbose=0) == pytest.approx(min(val_losses), rel=1e-4)
    assert model.dtype_policy.name == "float32"


def test_same_seed_gives_same_history_on_cpu(tmp_path):
    runs = []
    for name in ("a", "b"):
        train, val = tiny_datasets()
        train_model(
            train,
            val,
            out_dir=tmp_path / name,
            settings=settings_of(cnn_settings(), "cnn"),
            num_classes=3,
            image_size=SIZE,
            seed=11,
        )
        runs.append(read_history(tmp_path / name))
    assert runs[0] == runs[1]
    train, val = tiny_datasets()
    train_model(
        train,
        val,
        out_dir=tmp_path / "c",
        settings=settings_of(cnn_settings(), "cnn"),
        num_classes=3,
        image_size=SIZE,
        seed=12,
    )
    assert read_history(tmp_path / "c") != runs[0]  # the seed really matters


CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {workflow!r})
    import numpy as np, tensorflow as tf
    from quiltflow.core.settings import ModelSettings
    from quiltflow.models.train import train_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(24) % 3).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    if os.environ.get("SLOW"):  # the first run is slow so the parent can kill it mid-epoch
        slow = lambda a, b: (tf.py_function(lambda t: (time.sleep(0.25), t)[1], [a], tf.uint8), b)
        train = train.map(slow).map(lambda a, b: (tf.ensure_shape(a, [None, 32, 32, 3]), b))
    val = tf.data.Dataset.from_tensor_slices((x[:8], y[:8])).batch(8)
    settings = dict(architecture="custom_cnn", epochs=8, batch_size=8, learning_rate=1e-3, patience=100)
    train_model(train, val, out_dir={out!r}, settings=ModelSettings.from_config(settings, "cnn"),
                num_classes=3, image_size=32, seed=0, threads=1)
    """
)


@pytest.mark.slow
def test_sigkilled_training_resumes_from_last_finished_epoch(tmp_path):
    out = tmp_path / "cnn"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(workflow=str(WORKFLOW), out=str(out)))
    env = {**os.environ, "SLOW": "1", "CUDA_VISIBLE_DEVICES": ""}
    meta = out / "backup" / "main" / "training_metadata.json"
    child = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if meta.is_file() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    assert child.poll() is None, child.stdout.read().decode()[-2000:]
    time.sleep(0.3)  # inside the next epoch
    child.send_signal(signal.SIGKILL)
    child.wait()
    backed_up = json.loads(meta.read_text())["epoch"]
    assert 2 <= backed_up < 8 and not (out / "model.keras").exists()

    env.pop("SLOW")
    rerun = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    log = rerun.stdout + rerun.stderr
    assert f"Epoch {backed_up + 1}/8" in log and f"Epoch {backed_up}/8" not in log  # continued, not restarted
    info = json.loads((out / "train_info.json").read_text())
    assert info["resumed_from_epoch"] == backed_up and info["epochs_run"] == 8
    assert [int(r["epoch"]) for r in read_history(out)] == list(range(8))  # no gap, no duplicate


@pytest.mark.slow
def test_finetune_warms_up_then_unfreezes(tmp_path):
    train, val = tiny_datasets(n=16)
    settings = {
        "architecture": "resnet50_finetune",
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "weights": "none",
        "warmup_epochs": 1,
    }
    info = train_model(
        train, val, out_dir=tmp_path, settings=settings_of(settings, "ft"), num_classes=3, image_size=SIZE, seed=0
    )
    assert info["epochs_run"] == 2 and info["settings"]["finetune_learning_rate"] == pytest.approx(1e-4)
    assert [int(r["epoch"]) for r in read_history(tmp_path)] == [0, 1]
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.predict(np.zeros((1, SIZE, SIZE, 3), np.uint8), verbose=0).shape == (1, 3)
