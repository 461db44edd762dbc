"""Snakemake script: the STAC catalog of the run's outputs, validated offline once written."""

from pixeldino.catalog import build_catalog
from pixeldino.runner import snakemake_stage
from pixeldino.stac_checks import validate_catalog


def main() -> None:
    i = snakemake.input
    out = snakemake.output.catalog
    build_catalog(
        out,
        run=snakemake.params.run,
        sidecars=list(i.sidecars),
        probabilities=list(i.probabilities),
        pseudo=list(i.pseudo),
        polygons=list(i.polygons),
        merged={"gpkg": i.merged_gpkg, "parquet": i.merged_parquet},
        change=snakemake.params.change,
        model_card=i.model_card if isinstance(i.model_card, str) else None,  # [] when the model has no card
    )
    validate_catalog(f"{out}/catalog.json")


snakemake_stage(snakemake, "catalog", main)
