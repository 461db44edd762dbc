"""Snakemake script: train a segmentation model on the chips and export it (teacher or student, train.export)."""

from pathlib import Path

from pixeldino.params import from_config
from pixeldino.runner import snakemake_stage
from pixeldino.train import TrainConfig, TrainOutputs, run_train


def main() -> None:
    config = from_config(TrainConfig, snakemake.params.train, source="config train", num_threads=snakemake.threads)
    out = snakemake.output
    outputs = TrainOutputs(
        model=Path(out.model), log_csv=Path(out.log_csv), curves_png=Path(out.curves),
        work_dir=Path(snakemake.params.work_dir),
    )  # fmt: skip
    run_train(config, snakemake.input.chips, outputs, bands=snakemake.params.bands)


snakemake_stage(snakemake, "train", main)
