"""Published encoders (issue 25): rule fetch_encoder and quiltflow.dag.encoders, the encoder
architectures (quiltflow.models.published), offline. The tests write their own tiny checkpoints: a
timm-format ResNet18 (config.json + model.safetensors of random tensors under timm's key names,
converted by keras-hub at load time exactly as a fetched ``hf://`` timm preset is) and a Keras preset
(``save_to_preset``). Nothing here reaches the network: hub failures are the hub client's own
exception types raised by a stand-in download, or the real client with the network closed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, sha256_file
from quiltflow.dag import encoders as enc
from quiltflow.dag.config import validate_config
from workflow_runner import REPO, clone_run, local_rules, snakemake

TIMM_MEAN, TIMM_STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def write_timm_resnet18(folder: Path, seed: int = 0, licence: str | None = "apache-2.0") -> Path:
    """A timm ``resnet18`` checkpoint: torch layouts (out, in, kh, kw) under timm's key names."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def conv(key: str, out: int, inp: int, k: int) -> None:
        scale = np.sqrt(2.0 / (inp * k * k))
        tensors[f"{key}.weight"] = (rng.standard_normal((out, inp, k, k)) * scale).astype(np.float32)

    def bn(key: str, c: int) -> None:
        tensors[f"{key}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        tensors[f"{key}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        tensors[f"{key}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        tensors[f"{key}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            key = f"layer{stage + 1}.{block}"
            if block == 0 and stage > 0:
                conv(f"{key}.downsample.0", cout, cin, 1)
                bn(f"{key}.downsample.1", cout)
            conv(f"{key}.conv1", cout, cin if block == 0 else cout, 3)
            bn(f"{key}.bn1", cout)
            conv(f"{key}.conv2", cout, cout, 3)
            bn(f"{key}.bn2", cout)
        cin = cout
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = {"input_size": [3, 48, 48], "mean": TIMM_MEAN, "std": TIMM_STD}
    if licence:
        cfg["license"] = licence
    config = {"architecture": "resnet18", "num_classes": 0, "num_features": 512, "pretrained_cfg": cfg}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_keras_preset(folder: Path) -> Path:
    """A tiny keras-hub ResNet backbone saved with ``save_to_preset`` (random weights)."""
    import keras
    from keras_hub.models import ResNetBackbone

    keras.utils.set_random_seed(3)
    backbone = ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
    )
    backbone.save_to_preset(str(folder))
    return folder


def _transformer_tensors(w, width: int, patch: int, size: int, layers: int) -> dict[str, np.ndarray]:
    """What transformers' ViT and DINOv2 checkpoints share, un-prefixed: the embeddings, the final
    norm and each layer's attention (``w(*shape)`` draws one tensor)."""
    tensors = {
        "embeddings.cls_token": w(1, 1, width),
        "embeddings.position_embeddings": w(1, (size // patch) ** 2 + 1, width),
        "embeddings.patch_embeddings.projection.weight": w(width, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": w(width),
        "layernorm.weight": 1 + w(width),
        "layernorm.bias": w(width),
    }
    for i in range(layers):
        key = f"encoder.layer.{i}.attention"
        for part in ("attention.query", "attention.key", "attention.value", "output.dense"):
            tensors |= {f"{key}.{part}.weight": w(width, width), f"{key}.{part}.bias": w(width)}
    return tensors


def write_transformers_vit(folder: Path, seed: int = 0, prefix: str = "vit.") -> Path:
    """A tiny transformers ViT checkpoint, HF key names and layouts: ``ViTForImageClassification``'s
    ``vit.`` keys (what keras-hub 0.32's converter reads), or ``prefix=""``: a bare ``ViTModel`` (phikon's)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    width, mlp, patch, size, layers = 32, 64, 8, 32, 2

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = _transformer_tensors(w, width, patch, size, layers)
    for i in range(layers):
        key = f"encoder.layer.{i}"
        tensors |= {f"{key}.intermediate.dense.weight": w(mlp, width), f"{key}.intermediate.dense.bias": w(mlp)}
        tensors |= {f"{key}.output.dense.weight": w(width, mlp), f"{key}.output.dense.bias": w(width)}
        for norm in ("layernorm_before", "layernorm_after"):
            tensors |= {f"{key}.{norm}.weight": 1 + w(width), f"{key}.{norm}.bias": w(width)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({prefix + key: value for key, value in tensors.items()}, str(folder / "model.safetensors"))
    config = {
        "model_type": "vit",
        "architectures": ["ViTModel"],
        "image_size": size,
        "patch_size": patch,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "hidden_size": width,
        "intermediate_size": mlp,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "qkv_bias": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    processor = {"image_mean": [0.6, 0.5, 0.4], "image_std": [0.2, 0.25, 0.3], "size": {"height": 32, "width": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {
        "timm": write_timm_resnet18(root / "timm"),
        "keras": write_keras_preset(root / "keras"),
        "vit": write_transformers_vit(root / "vit"),
    }


def spec(preset: str, name: str = "tiny", **entry) -> enc.EncoderSpec:
    return enc.EncoderSpec.from_config({"preset": preset, **entry}, name)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# --- fetch_encoder: local folders, the hub path, the record --------------------------------------------


def test_local_preset_is_recorded_and_only_read(checkpoints, tmp_path):
    before = listing(checkpoints["timm"])
    info = enc.fetch_encoder(spec(str(checkpoints["timm"])), tmp_path / "ck", tmp_path / "encoder_info.json")
    assert listing(checkpoints["timm"]) == before
    assert not (tmp_path / "ck").exists()  # referenced, not copied
    assert info.checkpoint_dir == str(checkpoints["timm"])
    assert (info.format, info.architecture, info.licence) == ("timm", "resnet18", "apache-2.0")
    assert info.sha256 == sha256_file(checkpoints["timm"] / "model.safetensors")
    assert read_json(tmp_path / "encoder_info.json", "x")["sha256"] == info.sha256


def test_keras_preset_and_licence_from_the_model_card(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["keras"], tmp_path / "keras")
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: lunit-non-commercial\n---\n# card\n")
    info = enc.fetch_encoder(spec(str(folder)), tmp_path / "ck", tmp_path / "info.json")
    assert (info.format, info.architecture, info.licence) == (
        "keras",
        "keras_hub>ResNetBackbone",
        "other (lunit-non-commercial)",
    )
    weights = {p.name for p in folder.iterdir() if p.name.endswith(".h5")}
    assert set(info.files) == weights and len(info.sha256) == 64


def test_no_stated_licence_is_none(tmp_path):
    folder = write_timm_resnet18(tmp_path / "timm", licence=None)
    assert enc.fetch_encoder(spec(str(folder)), tmp_path / "ck", tmp_path / "i.json").licence is None


def fake_hub(source: Path):
    """A stand-in for the hub download: the repository's files land in the folder, config first."""

    def download(repo_id: str, folder: Path, check) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / "config.json", folder / "config.json")
        check()  # the architecture is checked before the weights come
        shutil.copytree(source, folder, dirs_exist_ok=True)

    return download


def test_hf_preset_is_downloaded_into_its_folder(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "_hf_download", fake_hub(checkpoints["timm"]))
    info = enc.fetch_encoder(spec("hf://someone/resnet18.tiny"), tmp_path / "ck", tmp_path / "info.json")
    assert info.checkpoint_dir == str(tmp_path / "ck") and info.preset == "hf://someone/resnet18.tiny"
    assert info.sha256 == sha256_file(checkpoints["timm"] / "model.safetensors")


def hub_error(kind: str) -> BaseException:
    import httpx2
    from huggingface_hub import errors

    request = httpx2.Request("GET", "https://huggingface.co/api/models/owner/name")
    if kind == "gated":
        return errors.GatedRepoError(
            "Access to model owner/name is restricted.", response=httpx2.Response(401, request=request)
        )
    if kind == "forbidden":
        return errors.HfHubHTTPError("403 Forbidden", response=httpx2.Response(403, request=request))
    if kind == "missing":
        return errors.RepositoryNotFoundError("Repository Not Found", response=httpx2.Response(404, request=request))
    return errors.LocalEntryNotFoundError("Cannot reach the hub: connection error")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("gated", r"gated or private \(401/403\): accept its licence .* set HF_TOKEN"),
        ("forbidden", r"gated or private \(401/403\)"),
        ("missing", r"not found \(404\)"),
        ("offline", r"no network \(LocalEntryNotFoundError"),
    ],
)
def test_hub_failures_are_one_line(kind, reason, tmp_path, monkeypatch):
    def failing(repo_id, folder, check):
        raise hub_error(kind)

    monkeypatch.setattr(enc, "_hf_download", failing)
    with pytest.raises(UserError) as caught:
        enc.fetch_encoder(spec("hf://owner/name"), tmp_path / "ck", tmp_path / "info.json")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("encoder tiny: preset hf://owner/name: ")
    assert re.search(reason, message), message
    assert "set encoders.tiny.preset to that folder" in message
    assert not (tmp_path / "info.json").exists()


def test_wrong_architecture_stops_before_the_weights(tmp_path, monkeypatch):
    source = tmp_path / "vit"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"architecture": "vit_large_patch16_224", "num_classes": 0}))
    (source / "model.safetensors").write_bytes(b"never copied")
    monkeypatch.setattr(enc, "_hf_download", fake_hub(source))
    with pytest.raises(UserError, match=r"^encoder tiny: preset hf://MahmoodLab/UNI: wrong architecture: timm "):
        enc.fetch_encoder(spec("hf://MahmoodLab/UNI"), tmp_path / "ck", tmp_path / "info.json")
    assert not (tmp_path / "ck" / "model.safetensors").exists()
    with pytest.raises(UserError, match=r"wrong architecture: timm 'resnet50d'"):  # no converter for the D variant
        enc.checkpoint_format({"architecture": "resnet50d"}, spec("hf://x/y"))
    assert enc.checkpoint_format({"architecture": "resnet50"}, spec("hf://x/y")) == ("timm", "resnet50")
    bert = {"model_type": "bert"}
    with pytest.raises(UserError, match=r"wrong architecture: transformers model_type 'bert'"):
        enc.checkpoint_format(bert, spec("hf://x/y"))


def run_fetch(preset: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'workflow')!r})\n"
        "from quiltflow.dag.encoders import EncoderSpec, fetch_encoder\n"
        "from quiltflow.core.errors import UserError\n"
        "try:\n"
        f"    fetch_encoder(EncoderSpec.from_config({{'preset': {preset!r}}}, 'lunit'), 'ck', 'info.json')\n"
        "except UserError as exc:\n"
        "    print(exc)\n"
        "    assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
    )
    full = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1"},
        {
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "",
            "HF_HUB_ETAG_TIMEOUT": "3",
        },
    ],
    ids=["HF_HUB_OFFLINE", "closed-proxy"],
)
def test_the_real_client_without_network_is_one_line(env, tmp_path):
    """The real huggingface_hub client, the network closed: one line, 'no network', no TensorFlow."""
    proc = run_fetch("hf://1aurent/resnet50.lunit_bt", env, tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr[-2000:]
    assert lines[0].startswith("encoder lunit: preset hf://1aurent/resnet50.lunit_bt: no network ("), lines[0]


# --- config ------------------------------------------------------------------------------------


def base_config(models: dict, encoders: dict) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["models"] = models
    config["encoders"] = encoders
    return config


@pytest.mark.parametrize(
    ("model", "encoders", "message"),
    [
        ({"architecture": "encoder_frozen"}, {}, r"models.m.weights: encoder_frozen needs weights: encoder:<name>"),
        (
            {"architecture": "resnet50_frozen", "weights": "encoder:x"},
            {"x": {"preset": "hf://a/b"}},
            r"models.m.weights: resnet50_frozen cannot start from an encoder",
        ),
        ({"architecture": "encoder_finetune", "weights": "encoder:y"}, {}, r"encoder:y names no entry of encoders"),
        (
            {"architecture": "encoder_frozen", "weights": "encoder:x"},
            {"x": {"preset": "no/such/folder"}},
            r"^config key encoders.x.preset: folder not found: no/such/folder$",
        ),
        (
            {"architecture": "encoder_frozen", "weights": "encoder:x"},
            {"x": {"preset": "hf://just-a-name"}},
            r"encoders.x.preset: 'hf://just-a-name' is not hf://owner/name",
        ),
    ],
)
def test_config_errors_name_the_key(model, encoders, message, tmp_path):
    with pytest.raises(UserError, match=message):
        validate_config(base_config({"m": model}, encoders), base_dir=tmp_path)


def test_a_local_preset_inside_a_folder_the_workflow_deletes_is_refused(tmp_path):
    (tmp_path / "resources" / "encoders" / "mine").mkdir(parents=True)
    model = {"architecture": "encoder_frozen", "weights": "encoder:x"}
    with pytest.raises(UserError, match=r"^config key encoders.x.preset: .* lies inside resources/encoders/, a folder"):
        validate_config(base_config({"m": model}, {"x": {"preset": "resources/encoders/mine"}}), base_dir=tmp_path)


def test_encoder_model_takes_the_record_as_input(tmp_path):
    from quiltflow.dag.config import weights_files

    config = validate_config(
        base_config({"m": {"architecture": "encoder_frozen", "weights": "encoder:x"}}, {"x": {"preset": "hf://a/b"}}),
        base_dir=tmp_path,
    )
    assert config["encoders"]["x"] == {
        "preset": "hf://a/b",
        "image_size": None,
        "mean": None,
        "std": None,
        "pooling": "avg",
    }
    assert weights_files(config, "m") == ["resources/encoders/x/encoder_info.json"]


# --- the encoder architectures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def records(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """encoder_info.json of each tiny checkpoint, as rule fetch_encoder writes it."""
    root = tmp_path_factory.mktemp("records")
    out = {}
    for name, folder in checkpoints.items():
        out[name] = root / name / "encoder_info.json"
        enc.fetch_encoder(spec(str(folder), name=name), root / name / "checkpoint", out[name])
    return out


def uint8_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.uint8)


def test_timm_weights_land_in_the_keras_layers(records, checkpoints):
    """keras-hub's timm conversion through our loader: torch (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    from quiltflow.models.published import encoder_backbone
    from safetensors.numpy import load_file

    tensors = load_file(str(checkpoints["timm"] / "model.safetensors"))
    encoder = encoder_backbone(str(records["timm"]), 32).get_layer("encoder")
    np.testing.assert_array_equal(
        encoder.get_layer("conv1_conv").kernel.numpy(), tensors["conv1.weight"].transpose(2, 3, 1, 0)
    )
    last_bn = encoder.get_layer("stack3_block1_2_bn")
    np.testing.assert_array_equal(last_bn.moving_variance.numpy(), tensors["layer4.1.bn2.running_var"])


def test_preprocessing_comes_from_the_checkpoint_unless_set(records, tmp_path):
    from quiltflow.models.published import encoder_backbone

    pre = encoder_backbone(str(records["timm"]), 32).get_layer("encoder_preprocess").get_config()
    assert (pre["size"], pre["mean"], pre["std"]) == (48, TIMM_MEAN, TIMM_STD)  # timm pretrained_cfg
    info = read_json(records["timm"], "x") | {"image_size": 64, "mean": [0.1, 0.2, 0.3]}
    (tmp_path / "encoder_info.json").write_text(json.dumps(info))
    pre = encoder_backbone(str(tmp_path / "encoder_info.json"), 32).get_layer("encoder_preprocess").get_config()
    assert (pre["size"], pre["mean"], pre["std"]) == (64, [0.1, 0.2, 0.3], TIMM_STD)
    keras_pre = encoder_backbone(str(records["keras"]), 32).get_layer("encoder_preprocess").get_config()
    assert keras_pre["size"] == 32 and keras_pre["mean"] == [0.485, 0.456, 0.406]  # states none: ImageNet's


def test_hub_and_local_copies_give_the_same_features(records, checkpoints, tmp_path, monkeypatch):
    from quiltflow.models.published import encoder_backbone

    monkeypatch.setattr(enc, "_hf_download", fake_hub(checkpoints["timm"]))
    enc.fetch_encoder(spec("hf://someone/tiny"), tmp_path / "ck", tmp_path / "encoder_info.json")
    images = uint8_images(3, 32)
    hub = encoder_backbone(str(tmp_path / "encoder_info.json"), 32)(images)
    local = encoder_backbone(str(records["timm"]), 32)(images)
    assert hub.shape == (3, 512) and float(np.std(hub)) > 0
    np.testing.assert_allclose(np.asarray(hub), np.asarray(local), atol=1e-6)


@pytest.mark.parametrize("name", ["timm", "keras"])
def test_saved_encoder_model_is_self_contained(name, records, tmp_path):
    """model.keras carries preprocessing + encoder: it loads and predicts with no record around."""
    import keras
    from quiltflow.models.builders import build_model

    model = build_model("encoder_frozen", 3, 32, weights=str(records[name]), seed=1)
    images = uint8_images(4, 32)
    expected = np.asarray(model(images))
    model.save(tmp_path / "model.keras")
    moved = tmp_path / "gone"
    shutil.move(str(records[name].parent), moved)
    try:
        loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    finally:
        shutil.move(str(moved), records[name].parent)
    np.testing.assert_allclose(np.asarray(loaded(images)), expected, atol=1e-5)
    assert expected.shape == (4, 3) and np.allclose(expected.sum(axis=1), 1.0, atol=1e-5)


def test_finetune_unfreezes_the_encoder_but_not_batchnorm(records):
    from keras import layers
    from quiltflow.models.builders import build_model, set_backbone_trainable

    model = build_model("encoder_finetune", 2, 32, weights=str(records["keras"]))
    assert not model.get_layer("backbone").trainable_weights
    set_backbone_trainable(model, True)
    encoder = model.get_layer("backbone").get_layer("encoder")
    convs = [layer for layer in encoder.layers if isinstance(layer, layers.Conv2D)]
    bns = [layer for layer in encoder.layers if isinstance(layer, layers.BatchNormalization)]
    assert convs and bns and all(layer.trainable for layer in convs) and not any(layer.trainable for layer in bns)
    assert len(model.get_layer("backbone").trainable_weights) == len(convs)  # the kernels (no conv bias)


def test_cached_features_are_the_models_backbone(records, tmp_path):
    import tensorflow as tf
    from quiltflow.models.builders import build_model
    from quiltflow.models.features import extract_features, load_features, save_features

    images = uint8_images(5, 32, seed=4)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(5) % 2, [f"i{k}".encode() for k in range(5)]))
    arch = "encoder_frozen"
    data = extract_features(ds, image_size=32, weights=str(records["keras"]), batch_size=2, architecture=arch)
    model = build_model(arch, 2, 32, weights=str(records["keras"]))
    assert data["features"].shape == (5, 32)  # the tiny preset: 32 channels in its last stage
    np.testing.assert_allclose(data["features"], np.asarray(model.get_layer("backbone")(images)), atol=1e-5)
    save_features(tmp_path / "f.npz", data, image_size=32, weights=str(records["keras"]))
    assert load_features(tmp_path / "f.npz", image_size=32, feature_dim=None)["features"].shape == (5, 32)
    with pytest.raises(UserError, match=r"expected \[N, 2048\]"):
        load_features(tmp_path / "f.npz", image_size=32)


def test_gradcam_targets_the_encoders_feature_map(records):
    from quiltflow.evaluation.explain import gradcam, split_at, target_path
    from quiltflow.models.builders import build_model

    model = build_model("encoder_frozen", 3, 32, weights=str(records["keras"]))
    path = target_path(model, "encoder_frozen")
    assert path == ("backbone", "encoder")
    images = uint8_images(2, 32)
    front, back = split_at(model, path)
    assert tuple(front(images).shape) == (2, 4, 4, 32)  # stem /4, second stage /2
    np.testing.assert_allclose(np.asarray(back(front(images))), np.asarray(model(images)), atol=1e-5)
    maps, _ = gradcam(model, images, path)
    assert maps.shape == (2, 32, 32) and 0.0 <= maps.min() and maps.max() <= 1.0 and maps.max() > 0


def test_weights_description_names_the_encoder(records):
    from quiltflow.models.builders import weights_description

    text = weights_description(str(records["timm"]))
    assert text.startswith("encoder:timm (") and "resnet18" in text and "licence apache-2.0" in text


# --- end to end: two encoder arms, a prediction and a Grad-CAM, with the network closed ---------------

ENCODER_MODELS = ("timm_frozen", "keras_finetune")  # config/encoders_test.yaml
CLOSED_NETWORK = {"HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def encoder_run(finished_run, tmp_path_factory) -> tuple[Path, Path, str]:
    """A clone of finished_run (its data stages done) + config/encoders_test.yaml: fetch, features,
    training and evaluation of both arms, Grad-CAM and prediction of the timm one, no network."""
    root = tmp_path_factory.mktemp("encoder_run")
    workdir = clone_run(finished_run, root / "run")
    write_timm_resnet18(workdir / "resources/encoders_test/tiny_timm")
    write_keras_preset(workdir / "resources/encoders_test/tiny_keras")
    images = root / "my images"
    images.mkdir()
    for path in sorted((workdir / "resources/demo/images").rglob("*.jpg"))[:4]:
        shutil.copy(path, images / path.name)
    predict_yaml = root / "predict.yaml"
    predict_yaml.write_text(yaml.safe_dump({"predict": {"images": str(images), "models": ["timm_frozen"]}}))
    configs = ("config/test.yaml", "config/encoders_test.yaml", str(predict_yaml))
    targets = [f"results/metrics/{m}.json" for m in ENCODER_MODELS] + ["results/explain/timm_frozen", "predict"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CLOSED_NETWORK.items():
            patch.setenv(key, value)
        dry = snakemake(workdir, "--dry-run", *targets, configfiles=configs)
        snakemake(workdir, *targets, configfiles=configs)
    return workdir, images, dry.stdout + dry.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_fetch_is_a_local_rule_and_the_only_one_reading_the_preset(encoder_run):
    workdir, _, plan = encoder_run
    assert plan.count("rule fetch_encoder:") == 2  # one job per encoder
    assert local_rules(workdir, ("config/test.yaml", "config/encoders_test.yaml")) == ["fetch_encoder"]
    info = read_json(workdir / "resources/encoders/tiny_timm/encoder_info.json", "x")
    assert info["checkpoint_dir"] == "resources/encoders_test/tiny_timm"  # relative: the run folder can move
    assert not (workdir / "resources/encoders/tiny_timm/checkpoint").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_train_info_records_preset_hash_and_licence(encoder_run):
    workdir, _, _ = encoder_run
    timm = read_json(workdir / "results/models/timm_frozen/train_info.json", "x")
    sha = sha256_file(workdir / "resources/encoders_test/tiny_timm/model.safetensors")
    assert timm["encoder"] == {
        "name": "tiny_timm",
        "preset": "resources/encoders_test/tiny_timm",
        "format": "timm",
        "architecture": "resnet18",
        "sha256": sha,
        "licence": "apache-2.0",
    }
    assert timm["weights"].startswith("encoder:tiny_timm (resources/encoders_test/tiny_timm, resnet18, sha256 ")
    keras_info = read_json(workdir / "results/models/keras_finetune/train_info.json", "x")
    assert keras_info["encoder"]["format"] == "keras" and keras_info["encoder"]["licence"] is None
    with np.load(workdir / "results/features/encoder-tiny_timm/train.npz") as npz:
        assert npz["features"].shape[1] == 512
    for model in ENCODER_MODELS:
        metrics = read_json(workdir / f"results/metrics/{model}.json", "x")
        info = read_json(workdir / f"results/models/{model}/train_info.json", "x")
        assert metrics["model"] == model and metrics["encoder"] == info["encoder"]


@pytest.mark.e2e
@pytest.mark.slow
def test_prediction_and_gradcam_work_unchanged_on_an_encoder_model(encoder_run):
    import pandas as pd

    workdir, images, _ = encoder_run
    table = pd.read_parquet(workdir / "results/predict/timm_frozen.parquet")
    assert len(table) == len(list(images.iterdir())) == 4 and set(table["status"]) == {"ok"}
    pngs = list((workdir / "results/explain/timm_frozen").glob("*.png"))
    assert pngs, "no Grad-CAM gallery"


def test_transformers_vit_converts_and_pools_its_class_token(checkpoints, tmp_path):
    """A transformers ViT (phikon's format) through the same path: converted at load time,
    preprocessing from preprocessor_config.json, ``pooling: cls`` = the class token."""
    from quiltflow.models.published import encoder_backbone
    from safetensors.numpy import load_file

    record = tmp_path / "encoder_info.json"
    info = enc.fetch_encoder(spec(str(checkpoints["vit"]), pooling="cls"), tmp_path / "ck", record)
    assert (info.format, info.architecture) == ("transformers", "vit")
    model = encoder_backbone(str(record), 32)
    pre = model.get_layer("encoder_preprocess").get_config()
    assert (pre["size"], pre["mean"], pre["std"]) == (32, [0.6, 0.5, 0.4], [0.2, 0.25, 0.3])
    tensors = load_file(str(checkpoints["vit"] / "model.safetensors"))
    embedding = model.get_layer("encoder").layers[1]
    np.testing.assert_array_equal(
        embedding.patch_embedding.kernel.numpy(),
        tensors["vit.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
    )
    images = uint8_images(3, 32)
    tokens = model.get_layer("encoder")(model.get_layer("encoder_preprocess")(images))
    features = np.asarray(model(images))
    assert tokens.shape == (3, 17, 32) and features.shape == (3, 32)
    np.testing.assert_allclose(features, np.asarray(tokens)[:, 0], atol=1e-5)


def write_transformers_dinov2(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers DINOv2 checkpoint as ``Dinov2Model`` saves it (phikon-v2's format):
    un-prefixed keys, layer scales, a mask token, ``mlp_ratio`` in config.json."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    width, ratio, patch, size, layers = 32, 2, 8, 32, 2

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = _transformer_tensors(w, width, patch, size, layers) | {"embeddings.mask_token": w(1, width)}
    for i in range(layers):
        key = f"encoder.layer.{i}"
        tensors |= {f"{key}.mlp.fc1.weight": w(ratio * width, width), f"{key}.mlp.fc1.bias": w(ratio * width)}
        tensors |= {f"{key}.mlp.fc2.weight": w(width, ratio * width), f"{key}.mlp.fc2.bias": w(width)}
        for norm in ("norm1", "norm2"):
            tensors |= {f"{key}.{norm}.weight": 1 + w(width), f"{key}.{norm}.bias": w(width)}
        for scale in ("layer_scale1", "layer_scale2"):
            tensors[f"{key}.{scale}.lambda1"] = 1 + w(width)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {
        "model_type": "dinov2",
        "architectures": ["Dinov2Model"],
        "image_size": size,
        "patch_size": patch,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "hidden_size": width,
        "mlp_ratio": ratio,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "hidden_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "license": "other",
    }
    (folder / "config.json").write_text(json.dumps(config))
    processor = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "crop_size": {"height": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def test_transformers_dinov2_converts_like_phikon_v2(tmp_path):
    """phikon-v2's format (a bare ``Dinov2Model``) through keras-hub's DINOv2 converter: the
    weights land in the Keras layers and ``pooling: cls`` gives the class token."""
    from quiltflow.models.published import encoder_backbone
    from safetensors.numpy import load_file

    folder = write_transformers_dinov2(tmp_path / "dinov2")
    record = tmp_path / "encoder_info.json"
    info = enc.fetch_encoder(spec(str(folder), pooling="cls"), tmp_path / "ck", record)
    assert (info.format, info.architecture, info.licence) == ("transformers", "dinov2", "other")
    model = encoder_backbone(str(record), 32)
    pre = model.get_layer("encoder_preprocess").get_config()
    assert (pre["mean"], pre["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tensors = load_file(str(folder / "model.safetensors"))
    backbone = model.get_layer("encoder")
    np.testing.assert_array_equal(
        backbone.embeddings.patch_embeddings.projection.kernel.numpy(),
        tensors["embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        backbone.encoder.layers[1].layer_scale2.lambda1.numpy(), tensors["encoder.layer.1.layer_scale2.lambda1"]
    )
    images = uint8_images(3, 32)
    tokens = backbone(model.get_layer("encoder_preprocess")(images))
    features = np.asarray(model(images))
    assert features.shape == (3, 32)
    np.testing.assert_allclose(features, np.asarray(tokens)[:, 0], atol=1e-5)


def test_a_bare_vit_model_checkpoint_is_a_one_line_load_error(tmp_path):
    """keras-hub 0.32's ViT converter reads ``vit.``-prefixed keys only: a bare ``ViTModel``
    checkpoint (e.g. owkin/phikon) stops with one line naming the encoder (docs/encoders.md)."""
    from quiltflow.models.published import encoder_backbone

    folder = write_transformers_vit(tmp_path / "vit", prefix="")
    enc.fetch_encoder(spec(str(folder)), tmp_path / "ck", tmp_path / "encoder_info.json")
    with pytest.raises(UserError, match=r"^encoder tiny: cannot load .* \(transformers\): .*vit.embeddings") as caught:
        encoder_backbone(str(tmp_path / "encoder_info.json"), 32)
    assert "\n" not in str(caught.value)
