"""The Snakemake workflow: dry run, lint, bad input, and one end-to-end run of the demo (reduced steps)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "resources" / "demo"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(not (DEMO / "stac" / "catalog.json").exists(), reason="demo resources not built"),
]


def _workdir(tmp_path: Path) -> Path:
    """A copy of the workflow with the demo resources, so runs never touch the checkout's results/."""
    work = tmp_path / "wf"
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    shutil.copytree(ROOT / "workflow", work / "workflow")
    shutil.copytree(ROOT / "config", work / "config")
    shutil.copytree(ROOT / "resources" / "demo", work / "resources" / "demo")
    return work


def snakemake(work: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the package as installed or from the checkout
    return subprocess.run(
        [SNAKEMAKE, "--cores", "2", *args], cwd=work, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_dry_run_of_the_default_config(tmp_path) -> None:
    work = _workdir(tmp_path)
    res = snakemake(work, "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "search_scenes" in out  # the checkpoint comes first; the rest is planned from its manifest


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


def test_end_to_end_demo(tmp_path) -> None:
    """The whole chain on the real demo chips with a few training steps; checks the files a user opens."""
    import geopandas as gpd
    import rasterio

    work = _workdir(tmp_path)
    res = snakemake(work, "--configfile", "config/config.yaml", "config/test/fast.yaml")
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    out = work / "results" / "fast"

    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(s["tile"] for s in manifest["scenes"]) == ["08WMA", "52WEE"]

    for scene in manifest["scenes"]:
        with rasterio.open(out / "predictions" / f"{scene['id']}_prob.tif") as src:
            assert src.count == 1 and src.dtypes[0] == "uint8"
            assert src.crs.to_epsg() == int(scene["crs"].split(":")[1])
            assert src.width == 251 and src.height == 251
            prob = src.read(1)
            assert prob.max() <= 254

    polygons = gpd.read_file(out / "rts_polygons.gpkg", layer="rts")
    assert polygons.crs.to_epsg() == 3413
    assert polygons.geometry.is_valid.all()
    assert {"rts_id", "area_m2", "n_detections", "scenes"} <= set(polygons.columns)

    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())["sites"]
    assert set(metrics) == {"Peel", "Peel_holdout", "Bykovsky"}
    for site in metrics.values():
        assert 0.0 <= site["pixel"]["iou"] <= 1.0
    for name in ("Peel", "Peel_holdout", "Bykovsky"):
        assert (out / "evaluation" / f"quicklook_{name}.png").stat().st_size > 10_000

    model = json.loads((out / "model" / "model.json").read_text())
    assert model["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08"]
    assert model["normalisation"]["method"] == "logsigmoid"
    assert (out / "benchmarks" / "train.tsv").exists()
    # nothing half-written is left behind
    assert not list(out.rglob(".*.tmp-*"))
