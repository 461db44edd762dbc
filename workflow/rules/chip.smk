rule chip:
    input:
        manifest=MANIFEST,
        scenes=scene_rasters,
        labels=config["labels"]["file"] or [],
    output:
        chips=keep_or_temp(directory(f"{RESULTS}/chips/chips.zarr"), "chips"),
        stats=f"{RESULTS}/chips/stats.json",
    params:
        bands=INPUT_BANDS,  # config bands + auxiliary layers (common.smk)
        labels=config["labels"],
        chips=config["chips"],
    log:
        f"{LOGS}/chip.log",
    benchmark:
        f"{BENCH}/chip.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/chip.py"
