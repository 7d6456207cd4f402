"""Published encoders (config section ``encoders``): which models use which, and fetching them once.

Rule ``fetch_encoder`` (a local rule: it runs on the submitting host, the one with internet)
materialises ``encoders.<name>.preset`` into ``resources/encoders/<name>/`` and records the
checkpoint's SHA-256 and licence in ``encoder_info.json``; every later job reads only that record
and the folder it names, so compute nodes need no network. ``hf://owner/name`` presets come from
the Hugging Face hub (``huggingface_hub``), ``kaggle://...`` from Kaggle (``kagglehub``); a local
folder is only read, never written. Standard library only at import (the Snakefile plans with
this module; no TensorFlow, the download clients are imported when a fetch runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from quiltflow.core.architectures import ENCODER_PREFIX, architecture, encoder_name
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, sha256_file, write_json
from quiltflow.core.paths import ENCODER_INFO, fill

HF_PREFIX = "hf://"
KAGGLE_PREFIX = "kaggle://"
POOLINGS = ("avg", "max", "cls")  # the schema's enum of encoders.<name>.pooling
# What keras-hub 0.32 converts (keras_hub/src/utils/{timm,transformers}/preset_loader.py), vision
# backbones only: a timm config.json names ``architecture``, a transformers one ``model_type``.
TIMM_ARCHITECTURES = ("resnet", "csp", "dark", "densenet", "mobilenet", "vgg", "efficientnet", "hgnetv2")
# Its timm ResNet converter builds these exactly (keras_hub/src/utils/timm/convert_resnet.py); no
# resnet50d, resnext, wide_resnet.
TIMM_RESNETS = ("resnet18", "resnet26", "resnet34", "resnet50", "resnet101", "resnet152")
TIMM_RESNETS += ("resnetv2_50", "resnetv2_101", "resnetv2_152")
TRANSFORMERS_MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers", "dinov3_vit", "swin")
WEIGHT_SUFFIXES = (".safetensors", ".weights.h5", ".h5", ".bin")
FETCHED_PATTERNS = ["*.json", "*.safetensors", "*.h5", "*.md", "LICENSE*"]  # hub files fetch_encoder keeps


@dataclass(frozen=True)
class EncoderSpec:
    """One ``encoders.<name>`` entry: where the checkpoint is and how its features are read."""

    name: str
    preset: str  # hf://owner/name, kaggle://owner/model/keras/variant[/version], or a local folder
    image_size: int | None  # the encoder's input size; None: the checkpoint's own (else the run's)
    mean: tuple[float, float, float] | None  # per-channel mean on [0, 1] pixels; None: the checkpoint's
    std: tuple[float, float, float] | None
    pooling: str  # avg | max (over the feature map or tokens) | cls (a ViT's class token)

    @classmethod
    def from_config(cls, entry: dict, name: str) -> EncoderSpec:
        key = f"config key encoders.{name}"
        preset = str(entry["preset"]).strip()
        if preset.startswith(HF_PREFIX) and not re.fullmatch(r"hf://[\w.-]+/[\w.-]+", preset):
            raise UserError(f"{key}.preset: {preset!r} is not hf://owner/name")
        if preset.startswith(KAGGLE_PREFIX) and preset.count("/") < 5:
            raise UserError(f"{key}.preset: {preset!r} is not kaggle://owner/model/keras/variant[/version]")
        mean, std = (tuple(float(v) for v in entry[k]) if entry.get(k) else None for k in ("mean", "std"))
        if std is not None and min(std) <= 0:
            raise UserError(f"{key}.std: {list(std)} must be positive")
        return cls(name, preset, entry.get("image_size"), mean, std, entry.get("pooling") or "avg")

    @property
    def is_local(self) -> bool:
        return not self.preset.startswith((HF_PREFIX, KAGGLE_PREFIX))


@dataclass(frozen=True)
class EncoderInfo:
    """``encoder_info.json``: what rule fetch_encoder materialised; every later job reads this."""

    name: str
    preset: str
    checkpoint_dir: str  # the folder keras-hub loads (resources/encoders/<name>/checkpoint, or the local preset)
    format: str  # keras | timm | transformers (how keras-hub reads config.json)
    architecture: str  # timm architecture, transformers model_type or the Keras class name
    sha256: str  # of the weights file (several: of their sorted "name sha256" lines)
    files: dict[str, str]  # weights file -> its SHA-256
    licence: str | None  # as the checkpoint's config or model card states it; None if it states none
    image_size: int | None
    mean: list[float] | None
    std: list[float] | None
    pooling: str

    @classmethod
    def read(cls, path: str | os.PathLike) -> EncoderInfo:
        return cls(**read_json(path, "encoder info"))

    def description(self) -> str:
        """The weights provenance a comparison row shows."""
        licence = f", licence {self.licence}" if self.licence else ""
        return f"{ENCODER_PREFIX}{self.name} ({self.preset}, {self.architecture}, sha256 {self.sha256[:12]}{licence})"


# --- config ------------------------------------------------------------------------------------


def encoder_specs(config: dict) -> dict[str, EncoderSpec]:
    """Every ``encoders`` entry, validated (one-line errors naming the key)."""
    return {name: EncoderSpec.from_config(entry, name) for name, entry in config.get("encoders", {}).items()}


def check_model_encoders(config: dict, base_dir: Path = Path(".")) -> None:
    """Encoder architectures name a defined encoder (``weights: encoder:<name>``); no other does."""
    specs = encoder_specs(config)
    for name, spec in specs.items():
        if spec.is_local and not (base_dir / spec.preset).is_dir():
            raise UserError(f"config key encoders.{name}.preset: folder not found: {spec.preset}")
    for model, entry in config["models"].items():
        key = f"config key models.{model}.weights"
        spec, wanted = architecture(entry["architecture"]), encoder_name(entry["weights"])
        if spec.uses_encoder and not wanted:
            raise UserError(f"{key}: {spec.name} needs weights: encoder:<name> (an entry of encoders)")
        if wanted is not None and not spec.uses_encoder:
            raise UserError(f"{key}: {spec.name} cannot start from an encoder; use an encoder architecture")
        if wanted is not None and wanted not in specs:
            raise UserError(f"{key}: encoder:{wanted} names no entry of encoders (defined: {sorted(specs) or 'none'})")


def encoder_info_path(name: str) -> str:
    """The encoder_info.json rule fetch_encoder writes for ``encoders.<name>``."""
    return fill(ENCODER_INFO, encoder=name)


def model_encoder_files(config: dict, model: str) -> list[str]:
    """A model's encoder record as a job input (empty when it uses no encoder)."""
    name = encoder_name(config["models"][model]["weights"])
    return [] if name is None else [encoder_info_path(name)]


def provenance(info_path: str | os.PathLike) -> dict:
    """``{"description", "encoder"}`` for train_info.json from an encoder_info.json."""
    info = EncoderInfo.read(info_path)
    keep = ("name", "preset", "format", "architecture", "sha256", "licence")
    return {"description": info.description(), "encoder": {key: getattr(info, key) for key in keep}}


# --- fetching ----------------------------------------------------------------------------------


def fetch_encoder(spec: EncoderSpec, checkpoint_dir: str | os.PathLike, info_path: str | os.PathLike) -> EncoderInfo:
    """Materialise ``spec.preset`` (download, or reference a local folder) and write its record."""
    if spec.is_local:
        folder = Path(spec.preset).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"encoder {spec.name}: preset {spec.preset}: no config.json in that folder")
    else:
        folder = Path(checkpoint_dir)
        _download(spec, folder)
    config = _read_config(folder, spec)
    fmt, arch = checkpoint_format(config, spec)
    files = weight_hashes(folder, spec)
    info = EncoderInfo(
        name=spec.name,
        preset=spec.preset,
        checkpoint_dir=str(folder),  # as given: relative to the working directory when the config's is
        format=fmt,
        architecture=arch,
        sha256=combined_sha256(files),
        files=files,
        licence=licence_of(folder, config),
        image_size=spec.image_size,
        mean=None if spec.mean is None else list(spec.mean),
        std=None if spec.std is None else list(spec.std),
        pooling=spec.pooling,
    )
    write_json(asdict(info), info_path)
    return info


def _read_config(folder: Path, spec: EncoderSpec) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"encoder {spec.name}: preset {spec.preset}: unreadable config.json ({exc})") from None


def checkpoint_format(config: dict, spec: EncoderSpec) -> tuple[str, str]:
    """(format, architecture) of a checkpoint's config.json; one that keras-hub cannot build as a
    vision backbone is a one-line 'wrong architecture' UserError."""
    where = f"encoder {spec.name}: preset {spec.preset}"
    if "registered_name" in config:
        return "keras", str(config["registered_name"])
    if "model_type" in config:
        if config["model_type"] not in TRANSFORMERS_MODEL_TYPES:
            raise UserError(
                f"{where}: wrong architecture: transformers model_type {config['model_type']!r}; "
                f"keras-hub converts {list(TRANSFORMERS_MODEL_TYPES)}"
            )
        return "transformers", str(config["model_type"])
    if "architecture" in config:
        arch = str(config["architecture"])
        if not arch.startswith(TIMM_ARCHITECTURES) or (arch.startswith("resnet") and arch not in TIMM_RESNETS):
            raise UserError(
                f"{where}: wrong architecture: timm {config['architecture']!r}; "
                f"keras-hub converts timm {list(TIMM_ARCHITECTURES)}*"
            )
        return "timm", str(config["architecture"])
    raise UserError(f"{where}: wrong architecture: config.json is not a Keras, timm or transformers config")


def weight_hashes(folder: Path, spec: EncoderSpec) -> dict[str, str]:
    """SHA-256 of every weights file in ``folder`` (read only)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise UserError(f"encoder {spec.name}: preset {spec.preset}: no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    return {p.name: sha256_file(p) for p in files}


def combined_sha256(files: dict[str, str]) -> str:
    """The one weights file's SHA-256; for several, the SHA-256 of their ``name sha256`` lines."""
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(f"{n} {h}\n" for n, h in sorted(files.items())).encode()).hexdigest()


def licence_of(folder: Path, config: dict) -> str | None:
    """The licence the checkpoint states: config.json (timm's ``pretrained_cfg.license`` or a top
    level ``license``), else the model card's front matter (``license:`` in README.md)."""
    stated = config.get("license") or (config.get("pretrained_cfg") or {}).get("license")
    if stated:
        return str(stated)
    readme = folder / "README.md"
    if readme.is_file():
        front = readme.read_text(errors="replace").split("---")
        header = front[1] if len(front) > 2 else ""
        match = re.search(r"^license:\s*(\S.*)$", header, re.M)
        named = re.search(r"^license_name:\s*(\S.*)$", header, re.M)  # the hub's license: other
        if match:
            licence = match.group(1).strip().strip("'\"")
            return f"{licence} ({named.group(1).strip()})" if named else licence
    return None


def _hint(spec: EncoderSpec) -> str:
    return (
        f"or download it elsewhere, copy the folder (config.json + weights) here and set "
        f"encoders.{spec.name}.preset to that folder"
    )


def _download(spec: EncoderSpec, folder: Path) -> None:
    """Download the preset into ``folder``: config.json first (its architecture is checked before
    the weights come), then the rest. Failures are one line naming preset, reason and remedy."""
    try:
        if spec.preset.startswith(HF_PREFIX):
            _hf_download(spec.preset.removeprefix(HF_PREFIX), folder, lambda: checkpoint_format(_config(folder), spec))
        else:
            _kaggle_download(spec.preset.removeprefix(KAGGLE_PREFIX), folder)
    except UserError:
        raise
    except Exception as exc:  # the clients' errors: classified, the first line kept
        raise UserError(f"encoder {spec.name}: preset {spec.preset}: {download_reason(exc)}; {_hint(spec)}") from None


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _hf_download(repo_id: str, folder: Path, check) -> None:
    """The one function that reaches the Hugging Face hub (tests replace it)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    folder.mkdir(parents=True, exist_ok=True)
    hf_hub_download(repo_id, "config.json", local_dir=folder)
    check()
    snapshot_download(repo_id, local_dir=folder, allow_patterns=FETCHED_PATTERNS)


def _kaggle_download(handle: str, folder: Path) -> None:
    """The one function that reaches Kaggle: kagglehub's cache copied into ``folder``."""
    import kagglehub

    cached = kagglehub.model_download(handle)
    shutil.copytree(cached, folder, dirs_exist_ok=True)


def download_reason(exc: BaseException) -> str:
    """A download failure in words: gated (401/403), not found (404), no network, or the error."""
    name = type(exc).__name__
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = (str(exc).splitlines() or [name])[0][:200]
    if name == "GatedRepoError" or status in (401, 403) or re.search(r"\b40[13]\b", first):
        return "gated or private (401/403): accept its licence on the model's hub page and set HF_TOKEN (or log in)"
    if name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") or isinstance(exc, (ConnectionError, TimeoutError)):
        return f"no network ({name}: {first})"
    if name in ("RepositoryNotFoundError", "RemoteEntryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"):
        return "not found (404): check the name"
    if status == 404 or re.search(r"\b404\b", first):
        return "not found (404): check the name"
    if "connect" in first.lower() or "resolve" in first.lower() or isinstance(exc, OSError):
        return f"no network ({name}: {first})"
    return f"{name}: {first}"
