# Published encoders (config section encoders; quiltflow.dag.encoders). Defined only when the
# config has an encoders entry (like pretrain_encoder): the rule list then says which stages a run has.
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
