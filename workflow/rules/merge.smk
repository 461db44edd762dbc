rule merge:
    input:
        polygons=scene_polygons,
    output:
        gpkg=f"{RESULTS}/rts_polygons.gpkg",
        parquet=f"{RESULTS}/rts_polygons.parquet",
    params:
        merge=config["merge"],
    log:
        f"{LOGS}/merge.log",
    benchmark:
        f"{BENCH}/merge.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/merge.py"
