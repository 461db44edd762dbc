# Maps per year and change (when search.years has at least two years): per tile, the shift of every scene against
# the tile's reference scene (co-registration), then per-year maps and slump tracks from the shifted polygons.
# CHANGE, CHANGE_YEARS, CHANGE_OUTPUTS and the tile helpers live in common.smk.
rule coregister_tile:
    input:
        scenes=lambda w: expand(f"{RESULTS}/scenes/{{scene}}.tif", scene=tile_scene_ids(w.tile)),
        sidecars=lambda w: expand(f"{RESULTS}/scenes/{{scene}}.json", scene=tile_scene_ids(w.tile)),
    output:
        sidecar=f"{RESULTS}/coregistration/{{tile}}.json",
    params:
        change=config["change"],
    log:
        f"{LOGS}/coregister_tile/{{tile}}.log",
    benchmark:
        f"{BENCH}/coregister_tile/{{tile}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/coregister_tile.py"


rule change:
    input:
        polygons=scene_polygons,
        coregistration=coregistration_sidecars,
    output:
        gpkg=CHANGE_OUTPUTS["gpkg"],
        tracks_parquet=CHANGE_OUTPUTS["tracks_parquet"],
        years_parquet=CHANGE_OUTPUTS["years_parquet"],
        change_png=report(CHANGE_OUTPUTS["change_png"], caption="../report/change.rst", category="Change"),
        growth_png=report(CHANGE_OUTPUTS["growth_png"], caption="../report/growth.rst", category="Change"),
    params:
        years=CHANGE_YEARS,
        merge=config["merge"],
        change=config["change"],
    log:
        f"{LOGS}/change.log",
    benchmark:
        f"{BENCH}/change.tsv"
    resources:
        mem_mb=8000,
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/change.py"
