if DEMO:

    rule generate_demo_data:
        """Synthetic Quilt-format lookup + H&E-like tiles (offline, deterministic from the seed)."""
        # Fixed paths under resources/demo/, never dataset.* (a user's data is only ever read):
        # Snakemake deletes a directory() output before rerunning its job.
        output:
            lookup=DEMO_LOOKUP,
            images=directory(DEMO_IMAGES),
        log:
            "logs/generate_demo_data.log",
        conda:
            "../../envs/data.yaml"
        params:
            seed=config["seed"],
            images_per_class=DATASET["demo"]["images_per_class"],
            tile_size=DATASET["demo"]["tile_size"],
            classes=DATASET["demo"]["classes"],
            code=script_code("generate_demo_data.py"),
        script:
            "../scripts/generate_demo_data.py"
