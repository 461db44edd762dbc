"""Snakemake script: fetch one scene's bands into a 10 m multi-band COG (plus quality mask and sidecar)."""

from pathlib import Path

from pixeldino.auxlayers import AuxParams
from pixeldino.fetch import FetchParams, run_fetch
from pixeldino.params import from_config
from pixeldino.runner import snakemake_stage


def main() -> None:
    params = FetchParams(**snakemake.params.fetch)
    run_fetch(
        params,
        manifest=snakemake.input.manifest,
        bands=snakemake.params.bands,
        # the scene is written as <out_dir>/<scene id>.tif: the rule's output
        out_dir=Path(snakemake.output.scene).parent,
        scene_ids=[snakemake.wildcards.scene],
        aoi=snakemake.params.aoi,
        overwrite=True,  # Snakemake decided this output is missing or stale
        threads=snakemake.threads,
        aux=from_config(AuxParams, snakemake.params.aux, source="config aux"),
    )


snakemake_stage(snakemake, "fetch", main)
