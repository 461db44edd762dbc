"""Snakemake script: sliding-window RTS probability (and pseudo-class QA map) over one whole scene."""
from pixeldino.pipeline import given, predict_scene_on
from pixeldino.quality import find_quality_mask
from pixeldino.runner import snakemake_stage


def main() -> None:
    p = snakemake.params.predict
    predict_scene_on(
        p["dask_scheduler"],
        snakemake.input.scene,
        snakemake.input.model,
        snakemake.output.prob,
        out_pseudo=snakemake.output.pseudo,
        patch_size=p["patch_size"],
        overlap=p["overlap"],
        batch_size=p["batch_size"],
        chunk_size=p["chunk_size"],
        tta=p["tta"],
        device=p["device"],
        backend=p["backend"],
        precision=p["precision"],
        num_threads=snakemake.threads,
        quality_mask=find_quality_mask(snakemake.input.scene),  # the SCL mask fetch wrote, if any (L2A)
        **given(snakemake.params.quality, {"nodata_classes": "nodata_classes"}),
    )


snakemake_stage(snakemake, "predict", main)
