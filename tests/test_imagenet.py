"""keras.applications' ResNet50 ImageNet weights through rule fetch_imagenet_weights (issue 25),
offline: the DAG plans the fetch only when a model uses ``weights: imagenet``; the fetch copies the
Keras cache's file (MD5-checked) or downloads it (from a local HTTP server here), and fails in one
line without network; the builder loads only the fetched file. The weights files are the tests'
own: a few bytes for the fetch, a randomly initialised ResNet50 for the load."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from quiltflow.core import paths
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json
from quiltflow.dag import imagenet
from quiltflow.dag.config import validate_config, weights_files
from quiltflow.dag.representations import representation_of
from workflow_runner import REPO, copy_workflow, local_rules, run_workflow_script, snakemake

FAKE = b"not really ResNet50 weights"
FAKE_MD5 = hashlib.md5(FAKE).hexdigest()
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
CLOSED_PROXY = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


# --- the DAG -----------------------------------------------------------------------------------


def test_models_take_the_fetched_file_as_input_and_only_imagenet_ones(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["models"]["resnet50_frozen"]["weights"] = "imagenet"
    config["models"]["resnet50_finetune"]["weights"] = None  # the architecture's default: imagenet
    config = validate_config(config, base_dir=tmp_path)
    assert imagenet.imagenet_models(config) == ["resnet50_finetune", "resnet50_frozen"]
    assert weights_files(config, "resnet50_frozen") == [paths.IMAGENET_WEIGHTS]
    assert weights_files(config, "custom_cnn") == []
    # Unchanged names: existing feature caches and comparison rows keep theirs.
    assert representation_of("resnet50_frozen", "imagenet").name == "resnet50-imagenet"


def test_no_encoder_can_share_the_imagenet_folder(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["encoders"] = {paths.IMAGENET_ENCODER: {"preset": "hf://a/b"}}
    with pytest.raises(UserError, match=r"^config key encoders: 'imagenet-resnet50' does not match"):
        validate_config(config, base_dir=tmp_path)


def dry_run_jobs(workdir: Path, configs: tuple[str, ...]) -> dict[str, list[str]]:
    """Each planned job's header and input line of a dry run (rule name -> input lines)."""
    out = snakemake(workdir, "--dry-run", configfiles=configs).stdout
    jobs: dict[str, list[str]] = {}
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        header = next((line for line in lines if line.startswith(("rule ", "localrule ", "checkpoint "))), None)
        if header:
            name = header.split()[1].rstrip(":")
            jobs.setdefault(name, []).append(next((ln for ln in lines if ln.strip().startswith("input:")), ""))
    return jobs


def test_the_dag_fetches_once_before_training_and_extraction_and_only_for_imagenet(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "imagenet.yaml").write_text(yaml.safe_dump({"models": {"resnet50_frozen": {"weights": "imagenet"}}}))
    configs = ("config/test.yaml", "imagenet.yaml")
    jobs = dry_run_jobs(workdir, configs)
    assert len(jobs["fetch_imagenet_weights"]) == 1
    # Every extraction (only resnet50_frozen's representation is frozen-cached) and that model's
    # training read the fetched file; the random-init models do not.
    assert jobs["extract_features"] and all(paths.IMAGENET_WEIGHTS in line for line in jobs["extract_features"])
    assert sum(paths.IMAGENET_WEIGHTS in line for line in jobs["train_model"]) == 1
    assert local_rules(workdir, configs) == ["fetch_imagenet_weights"]
    plain = dry_run_jobs(workdir, ("config/test.yaml",))
    assert "train_model" in plain and "fetch_imagenet_weights" not in plain
    assert local_rules(workdir, ("config/test.yaml",)) == []


# --- the fetch ---------------------------------------------------------------------------------


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def no_network(*args, **kwargs):
    pytest.fail("the fetch must not reach the network")


def test_the_keras_cache_copy_is_used_without_network(keras_home, tmp_path, monkeypatch):
    cached = keras_home / "models" / paths.IMAGENET_WEIGHTS_FILE
    cached.parent.mkdir()
    cached.write_bytes(FAKE)
    monkeypatch.setattr(imagenet, "IMAGENET_MD5", FAKE_MD5)
    monkeypatch.setattr(imagenet, "unreachable", no_network)
    monkeypatch.setattr(imagenet.urllib.request, "build_opener", no_network)
    target, info_path = tmp_path / "out" / paths.IMAGENET_WEIGHTS_FILE, tmp_path / "out" / "encoder_info.json"
    info, source = imagenet.fetch_imagenet(target, info_path)
    assert source == str(cached) and target.read_bytes() == FAKE and cached.is_file()
    sha = hashlib.sha256(FAKE).hexdigest()
    assert read_json(info_path, "x") == {
        "name": "imagenet-resnet50",
        "preset": imagenet.IMAGENET_URL,
        "checkpoint_dir": paths.IMAGENET_DIR,
        "format": "keras-applications",
        "architecture": "ResNet50",
        "sha256": sha,
        "files": {paths.IMAGENET_WEIGHTS_FILE: sha},
        "licence": imagenet.IMAGENET_LICENCE,
        "image_size": None,
        "mean": None,
        "std": None,
        "pooling": "avg",
    }
    assert info.licence.startswith("MIT (keras-applications") and "ImageNet" in info.licence


def test_a_cache_copy_failing_the_md5_is_one_line_and_not_used(keras_home, tmp_path, monkeypatch):
    cached = keras_home / "models" / paths.IMAGENET_WEIGHTS_FILE
    cached.parent.mkdir()
    cached.write_bytes(FAKE)  # not keras.applications' file: its MD5 differs
    monkeypatch.setattr(imagenet, "unreachable", no_network)
    target = tmp_path / "out" / paths.IMAGENET_WEIGHTS_FILE
    with pytest.raises(UserError) as err:
        imagenet.fetch_imagenet(target, tmp_path / "out" / "encoder_info.json")
    message = str(err.value)
    assert "\n" not in message and f"md5 {FAKE_MD5}, expected {imagenet.IMAGENET_MD5}" in message
    assert f"the Keras cache's copy {cached} was not used" in message
    assert list(target.parent.iterdir()) == []


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server: {path: (status, body)}; any other path is a 404. No proxy in between."""
    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path, (404, b""))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    for key in PROXIES:
        monkeypatch.delenv(key, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/resnet/{paths.IMAGENET_WEIGHTS_FILE}"
    monkeypatch.setattr(imagenet, "IMAGENET_URL", url)
    yield routes
    httpd.shutdown()
    httpd.server_close()


def test_without_a_cache_copy_the_file_is_downloaded_and_md5_checked(server, keras_home, tmp_path, monkeypatch):
    server[f"/resnet/{paths.IMAGENET_WEIGHTS_FILE}"] = (200, FAKE)
    monkeypatch.setattr(imagenet, "IMAGENET_MD5", FAKE_MD5)
    target = tmp_path / "out" / paths.IMAGENET_WEIGHTS_FILE
    info, source = imagenet.fetch_imagenet(target, tmp_path / "out" / "encoder_info.json")
    assert source == imagenet.IMAGENET_URL and target.read_bytes() == FAKE
    assert info.sha256 == hashlib.sha256(FAKE).hexdigest()
    assert not (keras_home / "models").exists()  # the Keras cache is only read


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (200, "is not keras.applications' file (md5 "),  # served, but not the expected bytes
        (403, ": refused (403): "),
        (404, ": not found (404): "),
    ],
)
def test_download_failures_are_one_line_and_leave_nothing(status, reason, server, keras_home, tmp_path):
    server[f"/resnet/{paths.IMAGENET_WEIGHTS_FILE}"] = (status, FAKE)
    target = tmp_path / "out" / paths.IMAGENET_WEIGHTS_FILE
    with pytest.raises(UserError) as err:
        imagenet.fetch_imagenet(target, tmp_path / "out" / "encoder_info.json")
    message = str(err.value)
    assert "\n" not in message and reason in message, message
    assert f"at {keras_home / 'models' / paths.IMAGENET_WEIGHTS_FILE} on the host that runs snakemake" in message
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("stage", ["connect", "download"])
def test_a_closed_network_fails_fast_in_one_line(stage, keras_home, tmp_path, monkeypatch):
    for key, value in CLOSED_PROXY.items():
        monkeypatch.setenv(key, value)
    if stage == "download":  # the probe passes, the transfer itself is refused
        monkeypatch.setattr(imagenet, "unreachable", lambda url: None)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        imagenet.fetch_imagenet(tmp_path / "out" / paths.IMAGENET_WEIGHTS_FILE, tmp_path / "out" / "info.json")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"weights: imagenet: cannot fetch {paths.IMAGENET_WEIGHTS_FILE}: no network ("), message
    assert f"place it (from {imagenet.IMAGENET_URL}, md5 {imagenet.IMAGENET_MD5}) at " in message
    assert str(keras_home / "models" / paths.IMAGENET_WEIGHTS_FILE) in message
    assert list((tmp_path / "out").iterdir()) == []


def test_the_rule_s_script_runs_without_tensorflow(keras_home, tmp_path):
    """The job as Snakemake runs it (a fresh interpreter), network closed: one line in the log, and
    the fetch imports neither TensorFlow nor Keras (it runs on the submitting host)."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'workflow')!r}); sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from workflow_runner import run_workflow_script\n"
        "from quiltflow.core.errors import UserError\n"
        "try:\n"
        "    run_workflow_script('fetch_imagenet_weights.py', input={},\n"
        "        output={'weights': 'w/x.h5', 'info': 'w/encoder_info.json'}, params={}, log='fetch.log')\n"
        "except UserError as exc:\n"
        "    print('ERROR', exc)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    env = {**os.environ, **CLOSED_PROXY, "KERAS_HOME": str(keras_home)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines[-1] == "[]", proc.stdout + proc.stderr[-2000:]
    assert [line for line in lines if line.startswith("ERROR weights: imagenet: cannot fetch")], lines


def test_the_rule_s_script_records_what_it_fetched(keras_home, tmp_path, monkeypatch):
    cached = keras_home / "models" / paths.IMAGENET_WEIGHTS_FILE
    cached.parent.mkdir()
    cached.write_bytes(FAKE)
    monkeypatch.setattr(imagenet, "IMAGENET_MD5", FAKE_MD5)
    out = {"weights": str(tmp_path / "w" / paths.IMAGENET_WEIGHTS_FILE), "info": str(tmp_path / "w" / "info.json")}
    run_workflow_script("fetch_imagenet_weights.py", input={}, output=out, params={}, log=tmp_path / "fetch.log")
    assert Path(out["weights"]).read_bytes() == FAKE
    assert f"from {cached}, sha256 {hashlib.sha256(FAKE).hexdigest()}" in (tmp_path / "fetch.log").read_text()


# --- the builder -------------------------------------------------------------------------------

SIZE = 32  # ResNet50 builds at 32 px in seconds


def test_the_builder_loads_only_the_fetched_file(keras_home, tmp_path, monkeypatch):
    import keras
    import numpy as np
    from keras.src.legacy.saving import legacy_h5_format
    from quiltflow.models import builders

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        builders.build_model("resnet50_frozen", 3, SIZE, weights="imagenet")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"weights: imagenet: {paths.IMAGENET_WEIGHTS} not found (in {tmp_path})")
    # keras.applications' own file format (legacy HDF5, by layer name), random weights
    donor = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    Path(paths.IMAGENET_DIR).mkdir(parents=True)
    import h5py

    with h5py.File(paths.IMAGENET_WEIGHTS, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, donor)
    monkeypatch.setattr(keras.utils, "get_file", no_network)  # the Keras cache's downloader
    model = builders.build_model("resnet50_frozen", 3, SIZE, weights="imagenet")
    loaded = model.get_layer("backbone").get_layer("resnet50").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, donor.get_weights(), strict=True))
    assert not (keras_home / "models").exists()  # the (empty) Keras cache was neither read nor filled
    assert builders.weights_description("imagenet") == "ImageNet (Keras ResNet50 notop)"
    assert builders.weights_description("none") == "random init (none)"
