# The scene search is the workflow's one data-dependent step: a checkpoint whose manifest lists the scenes that
# every later target is expanded from (common.smk). The provider, AOI/tiles, date windows and cloud/snow limits
# come from the `stac` and `search` config sections.
if not PREMADE_MANIFEST:

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
