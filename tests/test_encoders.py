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
from workflow_runner import REPO

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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {"timm": write_timm_resnet18(root / "timm"), "keras": write_keras_preset(root / "keras")}


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
    (folder / "README.md").write_text("---\nlibrary_name: keras-hub\nlicense: cc-by-nc-4.0\n---\n# card\n")
    info = enc.fetch_encoder(spec(str(folder)), tmp_path / "ck", tmp_path / "info.json")
    assert (info.format, info.architecture, info.licence) == ("keras", "keras_hub>ResNetBackbone", "cc-by-nc-4.0")
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
