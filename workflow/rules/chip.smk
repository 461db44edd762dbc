rule chip:
    input:
        manifest=f"{RESULTS}/manifest.json",
        scenes=scene_rasters,
        labels=config["labels"]["file"] or [],
    output:
        chips=directory(f"{RESULTS}/chips/chips.zarr"),
        stats=f"{RESULTS}/chips/stats.json",
    params:
        bands=config["bands"],
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
