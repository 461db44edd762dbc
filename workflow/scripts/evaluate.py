"""Snakemake script: evaluate the predictions of every configured site against its labels."""
from pathlib import Path

from pixeldino.pipeline import evaluate_configured_sites
from pixeldino.runner import snakemake_stage


def main() -> None:
    evaluate_configured_sites(
        snakemake.params.sites,
        manifest=snakemake.input.manifest,
        predictions_dir=Path(snakemake.input.predictions[0]).parent,
        scenes_dir=Path(snakemake.input.scenes[0]).parent,
        out_json=snakemake.output.metrics,
        threshold=snakemake.params.threshold,
    )


snakemake_stage(snakemake, "evaluate", main)
