"""keras.applications' ResNet50 ImageNet weights (``weights: imagenet``), fetched once like an encoder.

Rule ``fetch_imagenet_weights`` (a local rule: it runs on the submitting host, the one with
internet) materialises the no-top weights file into ``resources/encoders/imagenet-resnet50/``
(``quiltflow.core.paths.IMAGENET_WEIGHTS``) with an ``encoder_info.json`` (source URL, SHA-256,
licence). Sources, in order: a copy already in the Keras cache (``$KERAS_HOME/models/`` or
``~/.keras/models/``, copied without network), else a download from keras.applications' URL. Both
are checked against keras.applications' own MD5. Every job that builds a model with ImageNet
weights takes that file as an input and loads only it (``quiltflow.models.builders``), so compute
nodes need neither network nor a Keras cache. Standard library only: the Snakefile plans with
this module, and the fetch needs no TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import urllib.request
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from quiltflow.core.architectures import IMAGENET, weights_name
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import sha256_file, write_json
from quiltflow.core.paths import IMAGENET_DIR, IMAGENET_ENCODER, IMAGENET_WEIGHTS, IMAGENET_WEIGHTS_FILE
from quiltflow.dag.encoders import EncoderInfo, download_reason

# keras.applications.resnet: BASE_WEIGHTS_PATH + file name, and WEIGHTS_HASHES["resnet50"][1] (the
# no-top file's MD5, as keras.utils.get_file checks it); keras 3.15.
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_WEIGHTS_FILE
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
# The keras-applications README's licensing section; the images' terms travel with the weights.
IMAGENET_LICENCE = (
    "MIT (keras-applications: ResNet50 weights ported from Kaiming He's release, "
    "github.com/KaimingHe/deep-residual-networks, under the MIT license); trained on ImageNet "
    "(ILSVRC-2012), whose terms of access allow non-commercial research and education only"
)
CONNECT_TIMEOUT_S = 5.0  # an offline host must fail in seconds, not hang in the download
READ_TIMEOUT_S = 30.0  # per socket operation: a stalled transfer errors, not hangs


# --- config ------------------------------------------------------------------------------------


def imagenet_models(config: dict) -> list[str]:
    """The models that start from ImageNet weights (config validated: defaults filled in)."""
    return sorted(m for m, entry in config["models"].items() if weights_name(entry["weights"]) == IMAGENET)


def model_imagenet_files(config: dict, model: str) -> list[str]:
    """A model's ImageNet weights file as a job input (empty unless its weights are imagenet)."""
    return [IMAGENET_WEIGHTS] if weights_name(config["models"][model]["weights"]) == IMAGENET else []


# --- fetching ----------------------------------------------------------------------------------


def keras_cache_file() -> Path:
    """Where Keras caches the file (``keras.utils.get_file``'s ``$KERAS_HOME/models``, by default
    ``~/.keras/models``): the first source, and where a user places it by hand."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models" / IMAGENET_WEIGHTS_FILE


def fetch_imagenet(weights_path: str | os.PathLike, info_path: str | os.PathLike) -> tuple[EncoderInfo, str]:
    """Copy the Keras cache's file (or download it) to ``weights_path``, write its record; return
    (record, where the file came from). Failures are one line naming file, reason and remedy."""
    target, cached = Path(weights_path), keras_cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    if cached.is_file():
        remedy = f"the Keras cache's copy {cached} was not used: delete it (it is then downloaded) or replace it"
        _check_md5(cached, remedy)
        _install(target, lambda part: shutil.copyfile(cached, part))
        source = str(cached)
    else:
        _download(target, cached)
        source = IMAGENET_URL
    sha = sha256_file(target)
    info = EncoderInfo(
        name=IMAGENET_ENCODER,
        preset=IMAGENET_URL,
        checkpoint_dir=IMAGENET_DIR,
        format="keras-applications",
        architecture="ResNet50",
        sha256=sha,
        files={target.name: sha},
        licence=IMAGENET_LICENCE,
        image_size=None,
        mean=None,
        std=None,
        pooling="avg",
    )
    write_json(asdict(info), info_path)
    return info, source


def md5_file(path: Path) -> str:
    """MD5 of a file: the only hash keras.applications publishes for its weights (not for security)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _check_md5(path: Path, remedy: str) -> None:
    found = md5_file(path)
    if found != IMAGENET_MD5:
        raise UserError(
            f"weights: imagenet: {IMAGENET_WEIGHTS_FILE} is not keras.applications' file (md5 {found}, "
            f"expected {IMAGENET_MD5}: a partial or different download); {remedy}"
        )


def _install(target: Path, write) -> None:
    """``write(part)`` then rename over ``target``: a failure leaves no half file under its name."""
    part = target.with_name(target.name + ".part")
    try:
        write(part)
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)


def _hint(cached: Path) -> str:
    return f"place it (from {IMAGENET_URL}, md5 {IMAGENET_MD5}) at {cached} on the host that runs snakemake, then rerun"


def _download(target: Path, cached: Path) -> None:
    """Download into ``target`` (through ``.part``), checking keras.applications' MD5."""
    where = f"weights: imagenet: cannot fetch {IMAGENET_WEIGHTS_FILE}"
    reason = unreachable(IMAGENET_URL)
    if reason:
        raise UserError(f"{where}: no network ({reason}); {_hint(cached)}")
    try:
        _install(target, lambda part: _retrieve(part, cached))
    except UserError:
        raise
    except Exception as exc:  # urllib's errors: classified, the first line kept
        raise UserError(f"{where}: {_reason(exc)}; {_hint(cached)}") from None


def _retrieve(part: Path, cached: Path) -> None:
    """The one function that reaches the network (tests point IMAGENET_URL at a local server).

    A fresh opener: its proxy settings are the environment's now (urlopen's global one keeps those
    of its first use)."""
    with urllib.request.build_opener().open(IMAGENET_URL, timeout=READ_TIMEOUT_S) as response, open(part, "wb") as fh:
        shutil.copyfileobj(response, fh, 1 << 20)
    _check_md5(part, f"the download from {IMAGENET_URL} was discarded; {_hint(cached)}")


def _reason(exc: BaseException) -> str:
    """An HTTP refusal or absence in this file's words; the rest as for an encoder (no network...)."""
    code = getattr(exc, "code", None)
    if code in (401, 403):
        return f"refused ({code}): the host denies the file to this machine (a proxy or firewall?)"
    if code == 404:
        return "not found (404): keras.applications may have moved it; check keras.applications.resnet"
    return download_reason(exc)


def endpoint(url: str) -> tuple[str, int]:
    """The host and port a download of ``url`` connects to first: its proxy's when one is set."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or "", proxy_parts.port or 80
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def unreachable(url: str) -> str | None:
    """Why ``url`` (or its proxy) cannot be reached within ``CONNECT_TIMEOUT_S`` (``None`` if it can).

    Runs in a daemon thread: DNS lookups ignore socket timeouts and can hang on a dead network.
    """
    host, port = endpoint(url)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 1)
    return result[0] if result else f"{host}:{port}: no answer in {CONNECT_TIMEOUT_S:g} s"
