# A self-contained STAC catalog of the run's outputs (pixeldino/catalog.py): one item per scene, the merged map,
# and the tracks when the run has several years. It is validated offline as it is written.
from pixeldino.modelio import model_card_path

# the model card (pixeldino/modelcard.py) of the model that made the maps: always written by the train rule; a
# given train.model may predate model cards, and then the catalog has none
MODEL_CARD = str(model_card_path(MODEL))


rule catalog:
    input:
        sidecars=lambda w: expand(f"{RESULTS}/scenes/{{scene}}.json", scene=scene_ids()),
        probabilities=scene_predictions,
        pseudo=lambda w: expand(f"{RESULTS}/predictions/{{scene}}_pseudo.tif", scene=scene_ids()),
        polygons=scene_polygons,
        merged_gpkg=f"{RESULTS}/rts_polygons.gpkg",
        merged_parquet=f"{RESULTS}/rts_polygons.parquet",
        change=list(CHANGE_OUTPUTS.values()) if CHANGE else [],
        model_card=MODEL_CARD if not TRAIN_MODEL or Path(MODEL_CARD).exists() else [],
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
