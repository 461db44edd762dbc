rule polygonize_scene:
    input:
        prob=f"{RESULTS}/predictions/{{scene}}_prob.tif",
        sidecar=f"{RESULTS}/scenes/{{scene}}.json",
        permanent_water=config["quality"]["permanent_water"]["file"] or [],
    output:
        polygons=f"{RESULTS}/polygons/{{scene}}.gpkg",
    params:
        polygonize=config["polygonize"],
        quality=config["quality"],
    log:
        f"{LOGS}/polygonize_scene/{{scene}}.log",
    benchmark:
        f"{BENCH}/polygonize_scene/{{scene}}.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/polygonize_scene.py"
