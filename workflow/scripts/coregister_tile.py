"""Snakemake script: sub-pixel shift of every scene of one tile against the tile's reference scene."""
from pixeldino.coregister import coregister_tile
from pixeldino.pipeline import given
from pixeldino.runner import snakemake_stage


def main() -> None:
    coregister_tile(
        list(snakemake.input.scenes),
        snakemake.output.sidecar,
        **given(snakemake.params.change, {"coregistration_band": "band"}),
    )


snakemake_stage(snakemake, "coregister", main)
