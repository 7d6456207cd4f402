"""The architecture registry: every fact about a model architecture, in one place.

Adding an architecture means one ``Architecture`` entry here plus its builder function in
``quiltflow.models.builders`` (named by ``builder``); config validation, the schema's enum (checked by a
test), training, feature extraction and evaluation all ask this registry. No TensorFlow here: the
Snakefile reads the registry while it builds the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass

from quiltflow.core.errors import UserError

NO_WEIGHTS = "none"
IMAGENET = "imagenet"
PRETRAINED_PREFIX = "pretrained:"  # weights: pretrained:<name> -> a pretraining.<name> job's backbone
ENCODER_PREFIX = "encoder:"  # weights: encoder:<name> -> a published encoder (encoders.<name>, rule fetch_encoder)


@dataclass(frozen=True)
class Backbone:
    """A feature extractor that architectures share and ``pretrain_encoder`` can pretrain."""

    name: str
    builder: str  # function in quiltflow.models.builders: (image_size) -> the bare base, float input
    preprocess: str  # layer class in quiltflow.models.builders: uint8 RGB -> the base's input
    feature_dim: int  # width of the pooled features


BACKBONES: dict[str, Backbone] = {
    spec.name: spec
    for spec in (Backbone(name="resnet50", builder="resnet50_base", preprocess="ResNet50Preprocess", feature_dim=2048),)
}


IMAGE = "image"  # Architecture.unit of frame models
VIDEO = "video"  # Architecture.unit of bag models (one prediction per video)
ATTENTION_POOLING = "attention"
MEAN_POOLING = "mean"


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    builder: str  # function in quiltflow.models.builders: (num_classes, image_size, *, weights, dropout, seed)
    default_weights: str  # when a model's weights is null: none (from scratch) or imagenet
    accepts_weights: bool  # False: trains from scratch only (weights must be none)
    trains_on_features: bool  # head trained on cached backbone features (rule extract_features)
    finetunes_backbone: bool  # head warm-up (warmup_epochs), then the backbone unfrozen
    default_augment: bool  # when a model's augment is null
    default_dropout: float  # when a model's dropout is null
    backbone: str | None = None  # BACKBONES entry whose weights it loads (None: no backbone)
    # Grad-CAM target (quiltflow.evaluation.explain): layer names from the saved model down through its
    # nested models to the target layer; () = the model's last Conv2D layer (its top level).
    gradcam_layer: tuple[str, ...] = ()
    # True: the backbone is a published encoder (weights: encoder:<name>, quiltflow.models.published).
    uses_encoder: bool = False
    # The unit a model classifies: "image" (one frame at a time) or "video" (a bag of a video's
    # frames, multiple-instance learning on cached features; quiltflow.models.mil).
    unit: str = IMAGE
    pooling: str | None = None  # bag models: "attention" (gated, Ilse et al. 2018) or "mean"
    # When a model's learning_rate is null. Bag models learn 10x slower: at 1e-3 gated attention
    # locked onto memorisable non-tissue frames within two epochs (docs/evidence.md section 10).
    default_learning_rate: float = 1e-3


# The output of ResNet50's last residual block, inside the nested backbone (quiltflow.models.builders).
RESNET50_LAST_BLOCK = ("backbone", "resnet50", "conv5_block3_out")
# A published encoder's feature map (before pooling): the nested keras-hub backbone's output.
ENCODER_FEATURE_MAP = ("backbone", "encoder")

REGISTRY: dict[str, Architecture] = {
    spec.name: spec
    for spec in (
        Architecture(
            name="custom_cnn",
            description="the study's small CNN, trained from scratch",
            builder="custom_cnn",
            default_weights=NO_WEIGHTS,
            accepts_weights=False,
            trains_on_features=False,
            finetunes_backbone=False,
            default_augment=True,
            default_dropout=0.25,
        ),
        Architecture(
            name="resnet50_frozen",
            description="frozen ResNet50 backbone + dense head trained on cached features",
            builder="resnet50_frozen",
            default_weights=IMAGENET,
            accepts_weights=True,
            trains_on_features=True,
            finetunes_backbone=False,
            default_augment=False,  # cached features cannot be augmented
            default_dropout=0.0,
            backbone="resnet50",
            gradcam_layer=RESNET50_LAST_BLOCK,
        ),
        Architecture(
            name="encoder_frozen",
            description="frozen published encoder (weights: encoder:<name>) + dense head trained on cached features",
            builder="encoder_frozen",
            default_weights=NO_WEIGHTS,  # must name its encoder (quiltflow.dag.encoders checks)
            accepts_weights=True,
            trains_on_features=True,
            finetunes_backbone=False,
            default_augment=False,  # cached features cannot be augmented
            default_dropout=0.0,
            gradcam_layer=ENCODER_FEATURE_MAP,
            uses_encoder=True,
        ),
        Architecture(
            name="encoder_finetune",
            description="published encoder (weights: encoder:<name>) + dense head, fine-tuned after a head warm-up",
            builder="encoder_finetune",
            default_weights=NO_WEIGHTS,
            accepts_weights=True,
            trains_on_features=False,
            finetunes_backbone=True,
            default_augment=True,
            default_dropout=0.0,
            gradcam_layer=ENCODER_FEATURE_MAP,
            uses_encoder=True,
        ),
        Architecture(
            name="resnet50_finetune",
            description="ResNet50 + dense head, fine-tuned end to end after a head warm-up",
            builder="resnet50_finetune",
            default_weights=IMAGENET,
            accepts_weights=True,
            trains_on_features=False,
            finetunes_backbone=True,
            default_augment=True,
            default_dropout=0.0,
            backbone="resnet50",
            gradcam_layer=RESNET50_LAST_BLOCK,
        ),
        Architecture(
            name="abmil",
            description="gated-attention multiple-instance learning over a video's cached frame features",
            builder="abmil",
            default_weights=IMAGENET,
            accepts_weights=True,
            trains_on_features=True,
            finetunes_backbone=False,
            default_augment=False,  # cached features cannot be augmented
            default_dropout=0.0,
            backbone="resnet50",
            unit=VIDEO,
            pooling=ATTENTION_POOLING,
            default_learning_rate=1e-4,
        ),
        Architecture(
            name="meanmil",
            description="mean of a video's cached frame features into the same classifier (abmil's control)",
            builder="meanmil",
            default_weights=IMAGENET,
            accepts_weights=True,
            trains_on_features=True,
            finetunes_backbone=False,
            default_augment=False,
            default_dropout=0.0,
            backbone="resnet50",
            unit=VIDEO,
            pooling=MEAN_POOLING,
            default_learning_rate=1e-4,
        ),
    )
}


def architecture(name: str, where: str = "architecture") -> Architecture:
    """The registry entry of ``name``; an unknown name is a one-line UserError naming ``where``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"{where}: unknown architecture {name!r}; choose one of {sorted(REGISTRY)}") from None


def backbone_spec(name: str, where: str = "backbone") -> Backbone:
    """The backbone entry of ``name``; an unknown name is a one-line UserError naming ``where``."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(f"{where}: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def weights_name(weights: str | None) -> str:
    """Normalise a weights value: None/"none"/"random"/"" -> "none", "imagenet", or a file path."""
    if weights is None or str(weights).strip().lower() in (NO_WEIGHTS, "random", ""):
        return NO_WEIGHTS
    if str(weights).strip().lower() == IMAGENET:
        return IMAGENET
    return str(weights)


def pretrained_name(weights: str | None) -> str | None:
    """``"simclr"`` for ``weights: pretrained:simclr``; None for any other weights value."""
    name = weights_name(weights)
    return name[len(PRETRAINED_PREFIX) :] if name.startswith(PRETRAINED_PREFIX) else None


def encoder_name(weights: str | None) -> str | None:
    """``"lunit"`` for ``weights: encoder:lunit``; None for any other weights value."""
    name = weights_name(weights)
    return name[len(ENCODER_PREFIX) :] if name.startswith(ENCODER_PREFIX) else None


def is_weights_file(weights: str | None) -> bool:
    """A path to a weights file the user names (not none, imagenet, pretrained:<name>, encoder:<name>)."""
    return (
        weights_name(weights) not in (NO_WEIGHTS, IMAGENET)
        and pretrained_name(weights) is None
        and encoder_name(weights) is None
    )
