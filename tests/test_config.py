"""Config validation: defaults filled from the schema, one-line errors naming the key or path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from quiltflow.core.errors import UserError
from quiltflow.core.schema import load_schema
from quiltflow.dag.config import validate_config

REPO = Path(__file__).resolve().parents[1]


def base_config() -> dict:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_default_config_is_valid_and_defaults_are_filled():
    config = validate_config(base_config())
    assert config["models"]["resnet50_frozen"]["patience"] == 3
    assert config["filters"]["dedupe"] is True
    assert config["evaluation"]["top_k"] == 3


def test_unset_weights_take_the_architecture_default():
    config = base_config()
    for model in config["models"].values():
        model.pop("weights")
    models = validate_config(config)["models"]
    assert models["custom_cnn"]["weights"] == "none"
    assert models["resnet50_frozen"]["weights"] == models["resnet50_finetune"]["weights"] == "imagenet"


def test_every_schema_key_has_a_description():
    def walk(schema: dict, path: str) -> None:
        for key, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{path}*.")

    walk(load_schema(), "")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c["models"]["custom_cnn"].update(architecture="vgg"), "models.custom_cnn.architecture"),
        (lambda c: c["models"]["custom_cnn"].update(epochs="ten"), "models.custom_cnn.epochs"),
        (lambda c: c.update(image_size=8), "image_size"),
        (lambda c: c.update(unknown_key=1), "<top level>"),
        (lambda c: c["dataset"].update(format="tsv"), "dataset.format"),
        (lambda c: c["splits"].update(fractions={"train": 0.9, "val": 0.2, "test": 0.1}), "splits.fractions"),
        (lambda c: c["dataset"]["demo"].update(enabled=False), "dataset.image_root"),
        (lambda c: c["models"]["resnet50_frozen"].update(weights="no/such/file.h5"), "models.resnet50_frozen.weights"),
        (lambda c: c["models"]["custom_cnn"].update(weights="imagenet"), "models.custom_cnn.weights"),
        (lambda c: c["dataset"]["demo"].update(classes=["only_one"]), "dataset.demo.classes"),
        (lambda c: c["tfrecords"].update(jpeg_quality=10), "tfrecords.jpeg_quality"),
        (lambda c: c["splits"].update(fractions={"train": 0.8, "val": 0, "test": 0.2}), "splits.fractions.val"),
        (lambda c: c["filters"].update(magnifications=[2, "unknown"]), "filters.magnifications.1"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(tmp_path, change, key):
    config = base_config()
    change(config)
    with pytest.raises(UserError) as err:
        validate_config(config, base_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"config key {key}"), message


def test_magnifications_may_keep_the_unknown_level():
    config = base_config()
    config["filters"]["magnifications"] = [2, None]
    assert validate_config(config)["filters"]["magnifications"] == [2, None]
