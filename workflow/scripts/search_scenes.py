"""Snakemake script: search the configured provider and write the scene manifest (checkpoint)."""

from pixeldino.providers import StacParams
from pixeldino.runner import snakemake_stage
from pixeldino.search import SearchParams, run_search


def main() -> None:
    params = SearchParams(**snakemake.params.search)
    stac = StacParams(**snakemake.params.stac)
    run_search(params, stac, bands=snakemake.params.bands, out_manifest=snakemake.output.manifest)


snakemake_stage(snakemake, "search", main)
