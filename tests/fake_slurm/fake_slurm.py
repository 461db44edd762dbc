#!/usr/bin/env python3
"""A stand-in for the SLURM client commands, for testing what the Snakemake SLURM executor submits.

Linked as sbatch, sacct, squeue, sinfo, scontrol, sacctmgr, sshare and scancel. `sbatch` appends its full command
line to $FAKE_SLURM_DIR/sbatch.log and hands out job ids; nothing is run, and `sacct`/`squeue` report every job as
FAILED, so Snakemake stops after the first round of submissions.
"""

import os
import sys
from pathlib import Path

state = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake_slurm"))
state.mkdir(parents=True, exist_ok=True)
ids_file = state / "job_ids"
command = Path(sys.argv[0]).name
args = sys.argv[1:]
joined = " ".join(args)


def job_ids() -> list[str]:
    return ids_file.read_text().split() if ids_file.exists() else []


if command == "sbatch":
    job_id = str(1000 + len(job_ids()))
    with ids_file.open("a") as f:
        f.write(job_id + "\n")
    with (state / "sbatch.log").open("a") as f:
        f.write(joined.replace("\n", " ") + "\n")
    print(f"{job_id};fakecluster" if "--parsable" in args else f"Submitted batch job {job_id}")
elif command == "sacct":
    if "Account" in joined:
        print("testaccount")
    elif "nodelist" in joined:
        print("node001")
    else:
        for job_id in job_ids():
            print(f"{job_id}|FAILED")
elif command == "squeue":
    for job_id in job_ids():
        print(f"{job_id}|FAILED")
elif command in ("sacctmgr", "sshare"):
    print("testaccount")
elif command == "sinfo":
    print("cpu\ngpu")
elif command == "scontrol":
    print("MinJobAge = 300 sec")
sys.exit(0)
