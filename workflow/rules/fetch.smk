rule fetch_scene:
    input:
        manifest=f"{RESULTS}/manifest.json",
    output:
        scene=f"{RESULTS}/scenes/{{scene}}.tif",
        sidecar=f"{RESULTS}/scenes/{{scene}}.json",
    params:
        bands=config["bands"],
        aoi=config["search"]["aoi"] if config["fetch"]["clip_to_aoi"] else None,
        resolution=config["fetch"]["resolution"],
    log:
        f"{LOGS}/fetch_scene/{{scene}}.log",
    benchmark:
        f"{BENCH}/fetch_scene/{{scene}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/fetch_scene.py"
