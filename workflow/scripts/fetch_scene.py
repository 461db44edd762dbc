"""Snakemake script: fetch one scene's bands into a 10 m multi-band COG."""
from pixeldino.fetch import fetch_scene
from pixeldino.pipeline import manifest_scene
from pixeldino.runner import snakemake_stage


def main() -> None:
    scene = manifest_scene(snakemake.input.manifest, snakemake.wildcards.scene)
    fetch_scene(
        scene,
        snakemake.params.bands,
        snakemake.output.scene,
        aoi=snakemake.params.aoi,
        resolution=snakemake.params.resolution,
    )


snakemake_stage(snakemake, "fetch", main)
