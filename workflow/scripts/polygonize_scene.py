"""Snakemake script: RTS probability raster -> polygons with attributes (GeoPackage layer 'rts')."""
from pixeldino.pipeline import given
from pixeldino.polygonize import polygonize_scene
from pixeldino.quality import find_quality_mask
from pixeldino.runner import snakemake_stage


def main() -> None:
    p = snakemake.params.polygonize
    polygonize_scene(
        snakemake.input.prob,
        snakemake.output.polygons,
        threshold=p["threshold"],
        min_area_m2=p["min_area_m2"],
        opening_radius=p["opening_radius"],
        # the sidecar names the scene's quality mask (L2A with SCL) or null
        quality_mask=find_quality_mask(snakemake.input.sidecar.removesuffix(".json") + ".tif"),
        permanent_water=snakemake.input.permanent_water or None,
        **given(snakemake.params.water, {"action": "water_action", "max_share": "water_max_share",
                                         "min_occurrence": "water_min_occurrence"}),
    )


snakemake_stage(snakemake, "polygonize", main)
