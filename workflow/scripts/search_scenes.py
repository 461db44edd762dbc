"""Snakemake script: search the configured provider and write the scene manifest (checkpoint)."""
from pixeldino.runner import snakemake_stage
from pixeldino.search import search_scenes, write_manifest


def main() -> None:
    stac, search = snakemake.params.stac, snakemake.params.search
    manifest = search_scenes(
        stac["catalog"],
        provider=stac["provider"],
        collection=stac["collection"],
        aoi=search["aoi"],
        tiles=search["tiles"] or None,
        datetime=search["datetime"],
        years=search["years"] or None,
        months=search["months"],
        max_cloud_cover=search["max_cloud_cover"],
        max_snow_cover=search["max_snow_cover"],
        max_scenes_per_tile=search["max_scenes_per_tile"],
        bands=snakemake.params.bands,
    )
    write_manifest(manifest, snakemake.output.manifest)


snakemake_stage(snakemake, "search", main)
