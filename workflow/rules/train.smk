from pixeldino.modelio import model_card_path

if not TRAIN_MODEL:

    rule train:
        input:
            chips=f"{RESULTS}/chips/chips.zarr",
            # fine-tuning: the model training starts from (train.init_from), so a new parent retrains
            init_from=config["train"]["init_from"] or [],
        output:
            model=f"{RESULTS}/model/model.safetensors",
            metadata=f"{RESULTS}/model/model.json",
            card=str(model_card_path(f"{RESULTS}/model/model.safetensors")),
            log_csv=f"{RESULTS}/model/training_log.csv",
            curves=report(
                f"{RESULTS}/model/training_curves.png",
                caption="../report/training.rst",
                category="Training",
            ),
        params:
            train=config["train"],
            bands=INPUT_BANDS,  # config bands + auxiliary layers (common.smk)
            # the checkpoint (checkpoint/) and TensorBoard log (tensorboard/) go beside the model, where earlier
            # versions kept them, so an interrupted run resumes
            work_dir=lambda wildcards, output: Path(output.model).parent,
        threads: 8  # capped at --cores when run locally; the SLURM profile sets its own
        resources:
            gpu=1,
            mem_mb=8000,
        log:
            f"{LOGS}/train.log",
        benchmark:
            f"{BENCH}/train.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/train.py"
