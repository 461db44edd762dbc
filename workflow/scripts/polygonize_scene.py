"""Snakemake script: RTS probability raster -> polygons with attributes (GeoPackage layer 'rts')."""

from pixeldino.params import from_config
from pixeldino.polygonize import PolygonizeParams, run_polygonize
from pixeldino.quality import QualityParams, quality_mask_of
from pixeldino.runner import snakemake_stage


def main() -> None:
    quality = from_config(QualityParams, snakemake.params.quality)
    run_polygonize(
        from_config(PolygonizeParams, snakemake.params.polygonize),
        snakemake.input.prob,
        snakemake.output.polygons,
        # the sidecar names the scene's quality mask (L2A with SCL) or null
        quality_mask=quality_mask_of(snakemake.input.sidecar),
        water=quality.permanent_water,
    )


snakemake_stage(snakemake, "polygonize", main)
