# A self-contained STAC catalog of the run's outputs (pixeldino/catalog.py): one item per scene, the merged map,
# and the tracks when the run has several years. It is validated offline as it is written.
rule catalog:
    input:
        sidecars=lambda w: expand(f"{RESULTS}/scenes/{{scene}}.json", scene=scene_ids()),
        probabilities=scene_predictions,
        pseudo=lambda w: expand(f"{RESULTS}/predictions/{{scene}}_pseudo.tif", scene=scene_ids()),
        polygons=scene_polygons,
        merged_gpkg=f"{RESULTS}/rts_polygons.gpkg",
        merged_parquet=f"{RESULTS}/rts_polygons.parquet",
        change=list(CHANGE_OUTPUTS.values()) if CHANGE else [],
    output:
        catalog=directory(f"{RESULTS}/stac"),
    params:
        run=config["run"],
        change=CHANGE_OUTPUTS if CHANGE else None,
    log:
        f"{LOGS}/catalog.log",
    benchmark:
        f"{BENCH}/catalog.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/catalog.py"
