rule polygonize_scene:
    input:
        prob=f"{RESULTS}/predictions/{{scene}}_prob.tif",
        sidecar=f"{RESULTS}/scenes/{{scene}}.json",
    output:
        polygons=f"{RESULTS}/polygons/{{scene}}.gpkg",
    params:
        polygonize=config["polygonize"],
    log:
        f"{LOGS}/polygonize_scene/{{scene}}.log",
    benchmark:
        f"{BENCH}/polygonize_scene/{{scene}}.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/polygonize_scene.py"
