"""Snakemake script: sub-pixel shift of every scene of one tile against the tile's reference scene."""

from pixeldino.change import ChangeParams
from pixeldino.coregister import coregister_tile
from pixeldino.params import from_config
from pixeldino.runner import snakemake_stage


def main() -> None:
    params = from_config(ChangeParams, snakemake.params.change)
    coregister_tile(list(snakemake.input.scenes), snakemake.output.sidecar, band=params.coregistration_band)


snakemake_stage(snakemake, "coregister", main)
