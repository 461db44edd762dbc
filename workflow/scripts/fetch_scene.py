"""Snakemake script: fetch one scene's bands into a 10 m multi-band COG (plus quality mask and sidecar)."""
from pixeldino.fetch import fetch_scene
from pixeldino.runner import snakemake_stage
from pixeldino.search import read_manifest


def main() -> None:
    manifest = read_manifest(snakemake.input.manifest)
    scene = next(s for s in manifest["scenes"] if s["id"] == snakemake.wildcards.scene)
    fetch_scene(
        {"provider": (manifest.get("provider") or {}).get("name"), **scene},
        snakemake.params.bands,
        snakemake.output.scene,
        aoi=snakemake.params.aoi,
        resolution=snakemake.params.resolution,
        harmonize=snakemake.params.harmonize,
        quality_mask=snakemake.params.quality_mask,
        threads=snakemake.threads,
    )


snakemake_stage(snakemake, "fetch", main)
