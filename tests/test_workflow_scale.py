"""The workflow at Arctic scale and after interruptions: dry runs of every shipped config, DAG build time for the
whole circumpolar domain, and kill-and-resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from wfutil import ROOT, SNAKEMAKE, copy_workflow, job_counts, run_snakemake

pytestmark = pytest.mark.workflow
FIXTURE = ROOT / "tests" / "data" / "arctic_manifest.json"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = copy_workflow(tmp_path / "wf", resources=("demo", "arctic", "rts_labels"))
    (work / "tests" / "data").mkdir(parents=True)
    shutil.copy(FIXTURE, work / "tests" / "data" / FIXTURE.name)
    (work / "config" / "fixture.yaml").write_text(f"search:\n  manifest: tests/data/{FIXTURE.name}\n")
    return work


@pytest.mark.parametrize("config", ["config.yaml", "region.yaml", "arctic.yaml"])
def test_every_shipped_config_dry_runs(work: Path, config: str) -> None:
    res = run_snakemake(work, "-n", "--cores", "8", "--configfile", f"config/{config}", timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]


def test_arctic_dry_run_plans_every_tile_within_a_minute(work: Path) -> None:
    import json

    n_scenes = len(json.loads(FIXTURE.read_text())["scenes"])
    assert n_scenes > 300  # every land tile of the circumpolar domain
    started = time.perf_counter()
    res = run_snakemake(
        work, "-n", "--cores", "8", "--configfile", "config/arctic.yaml", "config/fixture.yaml", timeout=300
    )
    elapsed = time.perf_counter() - started
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    counts = job_counts(res.stdout)
    # one fetch, one prediction and one polygonization per scene of the manifest; one chip, train and merge; with
    # three search years one co-registration per tile (one scene per tile here) and one change map; the catalog
    assert counts == {
        "fetch_scene": n_scenes,
        "chip": 1,
        "train": 1,
        "predict_scene": n_scenes,
        "polygonize_scene": n_scenes,
        "coregister_tile": n_scenes,
        "merge": 1,
        "change": 1,
        "catalog": 1,
        "all": 1,
        "total": 4 * n_scenes + 6,
    }
    assert elapsed < 60, f"dry run took {elapsed:.1f} s"


def test_killed_run_resumes_with_only_the_unfinished_work(work: Path) -> None:
    """Interrupt the demo while it trains (as Ctrl-C or a preempted job would); the rerun redoes only what was
    unfinished, and the interrupted job left no output that looks complete."""
    args = ["--cores", "2", "--configfile", "config/config.yaml", "config/test/fast.yaml"]
    overlay = work / "config" / "test" / "fast.yaml"
    overlay.write_text(overlay.read_text().replace("steps: 12", "steps: 400"))  # long enough to be interrupted
    proc = subprocess.Popen(
        [SNAKEMAKE, *args],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        # a shell's background job inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    train_log = work / "results" / "fast" / "logs" / "train.log"
    deadline = time.monotonic() + 400
    while not (train_log.exists() and "started" in train_log.read_text()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    time.sleep(3)  # well into training
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)

    out = work / "results" / "fast"
    assert (out / "chips" / "stats.json").exists()
    assert not (out / "model" / "model.safetensors").exists()  # the interrupted job left nothing finished-looking

    overlay.write_text(overlay.read_text().replace("steps: 400", "steps: 12"))
    plan = run_snakemake(work, "-n", *args, timeout=300)
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
    counts = job_counts(plan.stdout)
    assert counts.get("train") == 1 and counts.get("merge") == 1
    for done in ("search_scenes", "fetch_scene", "chip"):
        assert done not in counts, counts
    res = run_snakemake(work, *args, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert (out / "rts_polygons.gpkg").exists()
