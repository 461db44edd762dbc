"""Snakemake script: evaluate the predictions of every configured site against its labels."""

import logging

from pixeldino.evaluate import run_evaluate
from pixeldino.manifest import read_manifest
from pixeldino.runner import snakemake_stage


def main() -> None:
    i, out = snakemake.input, snakemake.output
    document = run_evaluate(
        snakemake.params.sites,
        scenes=read_manifest(i.manifest)["scenes"],  # the order of the rule's per-scene input lists
        predictions=list(i.predictions),
        images=list(i.scenes),
        quicklooks=list(out.quicklooks),
        out_json=out.metrics,
        threshold=snakemake.params.threshold,
    )
    for name, result in document["sites"].items():
        logging.getLogger("pixeldino.evaluate").info(
            "%s: pixel IoU %s, object recall %s", name, result["pixel"]["iou"], result["object"]["recall"]
        )


snakemake_stage(snakemake, "evaluate", main)
