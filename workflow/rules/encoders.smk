# Published encoders (config section encoders; quiltflow.dag.encoders). Defined only when the
# config has an encoders entry (like pretrain_encoder): the rule list then says which stages a run has.
from quiltflow.dag.imagenet import imagenet_models

ENCODERS = sorted(config["encoders"])

if ENCODERS:

    localrules:
        fetch_encoder,

    rule fetch_encoder:
        """Materialise one published encoder (hf://, kaggle:// or a local folder) into
        resources/encoders/{encoder}/ and record its SHA-256 and licence. A local rule: it runs on
        the submitting host, the one with internet; every compute job reads only this folder.
        """
        output:
            info=paths.ENCODER_INFO,
        log:
            "logs/fetch_encoder/{encoder}.log",
        wildcard_constraints:
            encoder="|".join(ENCODERS),
        conda:
            "../../envs/fetch.yaml"
        params:
            settings=lambda wc: config["encoders"][wc.encoder],
            checkpoint=lambda wc: paths.fill(paths.ENCODER_CHECKPOINT_DIR, encoder=wc.encoder),
            code=script_code("fetch_encoder.py"),
        script:
            "../scripts/fetch_encoder.py"


# keras.applications' ResNet50 ImageNet weights (weights: imagenet; quiltflow.dag.imagenet): fetched
# the same way, on the submitting host, into resources/encoders/imagenet-resnet50/. A rule of its
# own, not a fetch_encoder job: it has no encoders entry, no wildcard, and its output is the
# weights file itself (every job that loads it takes it as an input). Defined only when a model uses it.
IMAGENET_MODELS = imagenet_models(config)

if IMAGENET_MODELS:

    localrules:
        fetch_imagenet_weights,

    rule fetch_imagenet_weights:
        """Copy the ResNet50 ImageNet weights from the Keras cache, or download them, into
        resources/encoders/imagenet-resnet50/ (MD5-checked) and record SHA-256 and licence. A local
        rule: compute jobs read only this file, never the Keras cache or the network.
        """
        output:
            weights=paths.IMAGENET_WEIGHTS,
            info=paths.IMAGENET_INFO,
        log:
            f"logs/fetch_encoder/{paths.IMAGENET_ENCODER}.log",
        conda:
            "../../envs/fetch.yaml"
        params:
            code=script_code("fetch_imagenet_weights.py"),
        script:
            "../scripts/fetch_imagenet_weights.py"
