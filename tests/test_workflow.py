"""The Snakemake workflow: dry run, lint, bad input, and one end-to-end run of the demo (reduced steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wfutil import ROOT, copy_workflow, run_snakemake

DEMO = ROOT / "resources" / "demo"

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(not (DEMO / "stac" / "catalog.json").exists(), reason="demo resources not built"),
]


def _workdir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


def snakemake(work: Path, *args: str, timeout: int = 900):
    return run_snakemake(work, "--cores", "2", *args, timeout=timeout)


def test_dry_run_of_the_default_config(tmp_path) -> None:
    work = _workdir(tmp_path)
    res = snakemake(work, "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "search_scenes" in out  # the checkpoint comes first; the rest is planned from its manifest


def test_a_minimal_user_config_inherits_nothing_from_the_demo(tmp_path) -> None:
    """stac, search.aoi and labels.file are all a user needs; the run is named after the file, no demo site,
    hold-out or path leaks in."""
    work = _workdir(tmp_path)
    (work / "config" / "lena_2023.yaml").write_text(
        "stac: {provider: earth-search}\n"
        "search: {aoi: [126.0, 72.0, 127.0, 72.5], years: [2023]}\n"
        "labels: {file: resources/demo/labels/peel_consensus.gpkg}\n"
    )
    res = snakemake(work, "-n", "--configfile", "config/lena_2023.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "results/lena_2023/manifest.json" in out and "results/lena_2023/rts_polygons.gpkg" in out
    assert "results/demo" not in out and "evaluation" not in out  # no evaluation sites configured
    effective = subprocess.run(
        [sys.executable, "-m", "pixeldino", "config", "config/lena_2023.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
    ).stdout
    cfg = yaml.safe_load(effective)
    assert cfg["run"] == "lena_2023" and cfg["evaluate"]["sites"] == []
    assert cfg["labels"] == {"file": "resources/demo/labels/peel_consensus.gpkg", "footprint": None, "holdout": None}


def test_lint_is_clean(tmp_path) -> None:
    work = _workdir(tmp_path)
    res = snakemake(work, "--lint")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "Lints for" not in res.stdout + res.stderr


def test_invalid_config_value_stops_with_one_line(tmp_path) -> None:
    work = _workdir(tmp_path)
    res = snakemake(work, "-n", "--config", "run=bad run")
    assert res.returncode != 0
    assert "error: config: run: 'bad run' does not match" in res.stderr


def test_missing_label_file_stops_the_run(tmp_path) -> None:
    work = _workdir(tmp_path)
    (work / "resources/demo/labels/peel_consensus.gpkg").unlink()
    res = snakemake(work, "-n")
    assert res.returncode != 0
    assert "labels.file: file resources/demo/labels/peel_consensus.gpkg does not exist" in res.stderr


def test_date_range_without_scenes_stops_with_a_clear_message(tmp_path) -> None:
    work = _workdir(tmp_path)
    (work / "config" / "empty.yaml").write_text('search:\n  datetime: "2019-01-01/2019-02-01"\n')
    res = snakemake(work, "--configfile", "config/config.yaml", "config/empty.yaml", "--until", "search_scenes")
    assert res.returncode != 0
    log = (work / "results/demo/logs/search_scenes.log").read_text()
    assert "2019-01-01" in log and "max_cloud_cover" in log
    assert not (work / "results/demo/manifest.json").exists()


#: The SLURM profile against the stand-in commands: fail fast, check job status at once.
FAKE_SLURM_PROFILE = ["--workflow-profile", "workflow/profiles/slurm", "--latency-wait", "1", "--retries", "0",
                      "--slurm-init-seconds-before-status-checks", "1"]  # fmt: skip


def _fake_slurm_env(tmp_path: Path) -> dict[str, str]:
    """PATH with stand-in SLURM commands (tests/fake_slurm) that log each sbatch call to FAKE_SLURM_DIR/sbatch.log."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = ROOT / "tests" / "fake_slurm" / "fake_slurm.py"
    for name in ("sbatch", "sacct", "squeue", "sinfo", "scontrol", "sacctmgr", "sshare", "scancel"):
        (bin_dir / name).symlink_to(fake)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(tmp_path / "state")}


def test_fetch_all_downloads_only_scenes_and_fetch_local_keeps_them_off_the_cluster(tmp_path) -> None:
    """The login-node target fetches every scene of the manifest and nothing else, under the profile's network cap;
    with fetch.local a SLURM-profile run downloads on the host instead of submitting fetch jobs."""
    work = _workdir(tmp_path)
    (work / "config" / "fetch_local.yaml").write_text("fetch:\n  local: true\n")
    res = snakemake(work, "fetch_all", "--workflow-profile", "workflow/profiles/local")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert 'network=Resource("network", 8)' in out and out.count("network=1") == 2
    results = work / "results" / "demo"
    assert sorted(p.name for p in (results / "scenes").glob("*.tif")) == [
        "S2_08WMA_20210821.tif",
        "S2_52WEE_20210721.tif",
    ]
    assert not (results / "chips").exists() and not (results / "model").exists()

    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = _fake_slurm_env(tmp_path)
    slurm = [*FAKE_SLURM_PROFILE, "--forcerun", "fetch_scene"]
    local = run_snakemake(
        work,
        *slurm,
        "--configfile",
        "config/config.yaml",
        "config/fetch_local.yaml",
        "--",
        "fetch_all",
        timeout=300,
        env=env,
    )
    assert local.returncode == 0, (local.stdout + local.stderr)[-3000:]  # ran here: nothing was submitted
    sbatch_log = tmp_path / "state" / "sbatch.log"
    assert not sbatch_log.exists() or "rule_fetch_scene" not in sbatch_log.read_text()
    run_snakemake(work, *slurm, "--", "fetch_all", timeout=300, env=env)  # the stand-in fails every job
    assert sbatch_log.read_text().count("--comment rule_fetch_scene") == 2


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The whole chain on the real demo chips with a few training steps (config/test/fast.yaml)."""
    work = copy_workflow(tmp_path_factory.mktemp("demo") / "wf")
    res = snakemake(work, "--configfile", "config/config.yaml", "config/test/fast.yaml")
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return work


def test_end_to_end_demo(demo_run) -> None:
    """Checks the files a user opens after the demo."""
    import geopandas as gpd
    import rasterio

    out = demo_run / "results" / "fast"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(s["tile"] for s in manifest["scenes"]) == ["08WMA", "52WEE"]

    for scene in manifest["scenes"]:
        with rasterio.open(out / "predictions" / f"{scene['id']}_prob.tif") as src:
            assert src.count == 1 and src.dtypes[0] == "uint8"
            assert src.crs.to_epsg() == int(scene["crs"].split(":")[1])
            assert src.width == 251 and src.height == 251
            assert src.read(1).max() <= 254

    polygons = gpd.read_file(out / "rts_polygons.gpkg", layer="rts")
    assert polygons.crs.to_epsg() == 3413
    assert polygons.geometry.is_valid.all()
    assert {"rts_id", "area_m2", "n_detections", "scenes"} <= set(polygons.columns)
    assert polygons.scenes.notna().all() and set(polygons.tiles) <= {"08WMA", "52WEE"}

    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())["sites"]
    assert set(metrics) == {"Peel", "Peel_holdout", "Bykovsky"}
    for site in metrics.values():
        assert 0.0 <= site["pixel"]["iou"] <= 1.0
    for name in ("Peel", "Peel_holdout", "Bykovsky"):
        assert (out / "evaluation" / f"quicklook_{name}.png").stat().st_size > 10_000

    model = json.loads((out / "model" / "model.json").read_text())
    assert model["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08"]
    assert model["normalisation"]["method"] == "logsigmoid"
    for rule in ("search_scenes", "chip", "train", "merge", "evaluate"):
        assert (out / "benchmarks" / f"{rule}.tsv").exists(), rule
    assert not list(out.rglob(".*.tmp-*"))  # nothing half-written is left behind


def test_rerun_has_nothing_to_do(demo_run) -> None:
    res = snakemake(demo_run, "-n", "--configfile", "config/config.yaml", "config/test/fast.yaml")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_report_is_generated(demo_run) -> None:
    res = snakemake(demo_run, "--configfile", "config/config.yaml", "config/test/fast.yaml", "--report", "report.html")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    html = (demo_run / "report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for expected in ("training_curves.png", "metrics.json", "quicklook_Bykovsky.png"):
        assert expected in html, expected


def test_multiyear_variant_runs_the_change_rule(demo_run) -> None:
    """config/test/multiyear.yaml: two years (the demo chips and a shifted copy), reusing the fast run's model."""
    import subprocess
    import sys

    import geopandas as gpd
    import pyogrio

    from pixeldino.stac_checks import validate_catalog

    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_multiyear_demo.py"), "resources/multiyear"],
        cwd=demo_run,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (demo_run / "config" / "test" / "reuse_model.yaml").write_text(
        "train: {model: results/fast/model/model.safetensors}\n"
    )
    configs = [
        "config/config.yaml",
        "config/test/fast.yaml",
        "config/test/multiyear.yaml",
        "config/test/reuse_model.yaml",
    ]
    res = snakemake(demo_run, "--configfile", *configs)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    out = demo_run / "results" / "multiyear"
    shift = json.loads((out.parent.parent / "resources" / "multiyear" / "shift.json").read_text())
    for tile in ("08WMA", "52WEE"):
        coreg = json.loads((out / "coregistration" / f"{tile}.json").read_text())
        later = [e for e in coreg["scenes"].values() if e["year"] == 2023]
        assert len(later) == 1 and later[0]["status"] == "measured"
        assert abs(later[0]["dx_px"] - shift["dx_px"]) < 0.2 and abs(later[0]["dy_px"] - shift["dy_px"]) < 0.2
    layers = {name for name, _ in pyogrio.list_layers(out / "rts_change.gpkg")}
    assert {"rts_2021", "rts_2023", "rts_tracks", "rts_track_links"} <= layers
    tracks = gpd.read_file(out / "rts_change.gpkg", layer="rts_tracks")
    # threshold 0 (multiyear.yaml): each chip is one detection, the same in both years once co-registered
    assert len(tracks) == 2 and (tracks.status == "stable").all() and (tracks.n_years == 2).all()
    assert (tracks.growth_rel.abs() < 0.01).all()
    assert {"area_2021_m2", "area_2023_m2", "growth_m2_per_yr", "first_year", "last_year"} <= set(tracks.columns)
    for png in ("change_map.png", "growth.png"):
        assert (out / "change" / png).stat().st_size > 5000
    # catalog, collection; 4 scenes; 2 maps; the card of the (reused) model
    assert validate_catalog(out / "stac" / "catalog.json") == 2 + 4 + 2 + 1
    assert (out / "benchmarks" / "change.tsv").exists() and not (out / "chips").exists()  # the model was reused


def test_slurm_profile_submits_gpu_jobs(demo_run, tmp_path) -> None:
    """The SLURM profile parses, and what the executor plugin hands to sbatch asks train/predict for a GPU.

    Runs the real executor plugin against stand-in SLURM commands (tests/fake_slurm) that record each sbatch call
    and report every job as failed, so nothing runs. Kept last in this module: it leaves failed-job state behind.
    """
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = _fake_slurm_env(tmp_path)
    profile = [*FAKE_SLURM_PROFILE, "--configfile", "config/config.yaml", "config/test/fast.yaml"]
    for rule in ("predict_scene", "train"):  # predict first: a failed train would remove the model
        res = run_snakemake(demo_run, *profile, "--forcerun", rule, "--until", rule, timeout=300, env=env)
        assert "Error" in res.stdout + res.stderr  # the stand-in reports every job as failed
    calls = (tmp_path / "state" / "sbatch.log").read_text().splitlines()
    for rule, cpus in (("train", 16), ("predict_scene", 8)):
        lines = [c for c in calls if f"--comment rule_{rule}" in c]
        assert lines, f"no sbatch call for {rule}: {calls}"
        for line in lines:
            assert "--gpus=1" in line, line
            assert f"--cpus-per-gpu={cpus}" in line, line
            assert " -p gpu " in line, line
