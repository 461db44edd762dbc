rule evaluate:
    input:
        manifest=MANIFEST,
        predictions=scene_predictions,
        scenes=scene_rasters,
        labels=[site["labels"] for site in config["evaluate"]["sites"]],
    output:
        metrics=report(
            f"{RESULTS}/evaluation/metrics.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        quicklooks=report(
            expand(f"{RESULTS}/evaluation/quicklook_{{site}}.png", site=SITES),
            caption="../report/quicklook.rst",
            category="Evaluation",
        ),
    params:
        sites=config["evaluate"]["sites"],
        threshold=config["polygonize"]["threshold"],
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/evaluate.py"
