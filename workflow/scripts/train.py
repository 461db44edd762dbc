"""Snakemake script: train a segmentation model on the chips and export it (teacher or student, train.export)."""
from pixeldino.pipeline import train_config_from
from pixeldino.runner import snakemake_stage
from pixeldino.train import train_from_store


def main() -> None:
    config = train_config_from(snakemake.params.train, snakemake.params.normalisation, threads=snakemake.threads)
    train_from_store(snakemake.input.chips, snakemake.params.out_dir, config, bands=snakemake.params.bands)


snakemake_stage(snakemake, "train", main)
