"""Snakemake script: sliding-window RTS probability (and pseudo-class QA map) over one whole scene."""

from pixeldino.params import from_config
from pixeldino.predict import PredictParams, run_predict
from pixeldino.quality import QualityParams, quality_mask_of
from pixeldino.runner import snakemake_stage


def main() -> None:
    params = from_config(PredictParams, snakemake.params.predict, num_threads=snakemake.threads)
    run_predict(
        params,
        snakemake.input.scene,
        snakemake.input.model,
        snakemake.output.prob,
        out_pseudo=snakemake.output.pseudo,
        quality_mask=quality_mask_of(snakemake.input.sidecar),  # the SCL mask fetch wrote, if any (L2A)
        nodata_classes=from_config(QualityParams, snakemake.params.quality).nodata_classes,
    )


snakemake_stage(snakemake, "predict", main)
