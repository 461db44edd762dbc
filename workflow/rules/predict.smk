rule predict_scene:
    input:
        scene=f"{RESULTS}/scenes/{{scene}}.tif",
        sidecar=f"{RESULTS}/scenes/{{scene}}.json",  # names the scene's quality mask (or null)
        model=MODEL,
    output:
        prob=keep_or_temp(f"{RESULTS}/predictions/{{scene}}_prob.tif", "predictions"),
        pseudo=f"{RESULTS}/predictions/{{scene}}_pseudo.tif",
    params:
        predict=config["predict"],
        quality=config["quality"],
    threads: 8  # capped at --cores when run locally; the SLURM profile sets its own
    resources:
        gpu=1,
        mem_mb=4000,
    log:
        f"{LOGS}/predict_scene/{{scene}}.log",
    benchmark:
        f"{BENCH}/predict_scene/{{scene}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/predict_scene.py"
