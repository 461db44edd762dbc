checkpoint search_scenes:
    output:
        manifest=f"{RESULTS}/manifest.json",
    params:
        stac=config["stac"],
        search=config["search"],
        bands=config["bands"],
    log:
        f"{LOGS}/search_scenes.log",
    benchmark:
        f"{BENCH}/search_scenes.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/search_scenes.py"
