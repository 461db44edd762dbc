"""The `pixeldino` command: help for every verb, the whole chain on the demo data, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterfiles import write_geotiff

from pixeldino.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "resources" / "demo"
VERBS = ["search", "fetch", "chip", "train", "predict", "polygonize", "merge", "evaluate", "config"]


def test_help_lists_every_stage_verb() -> None:
    out = subprocess.run([sys.executable, "-m", "pixeldino.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in VERBS:
        assert f"    {verb}" in out.stdout, verb


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([verb, "--help"])
    assert info.value.code == 0
    assert "usage: pixeldino " + verb in capsys.readouterr().out


def test_missing_input_is_one_error_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["polygonize", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "x.gpkg")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "nope.tif" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "x.gpkg").exists()


def test_only_the_verb_being_run_builds_its_options() -> None:
    from pixeldino.cli import _verb_in

    assert _verb_in(["--log", "merge", "chip", "--out", "x"]) == "chip"  # 'merge' is the log file here
    assert _verb_in(["--log=run.log", "predict", "s.tif"]) == "predict"
    assert _verb_in(["--help"]) == "" and _verb_in(["serch"]) == ""
    # a light verb does not pay for torch (imported by predict's and train's parameter classes)
    code = (
        "import sys; from pixeldino.cli import build_parser; "
        "a = build_parser(only='merge').parse_args(['merge', 'p.gpkg', '--out', 'm.gpkg', '--crs', 'EPSG:6931']); "
        "print(a.inputs, a.crs, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['p.gpkg']", "EPSG:6931", "False"]


def test_an_option_refused_while_parsing_is_one_error_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["search", "--catalog", "c.json", "--bands", "B02,B99", "--out", "m.json"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --bands B02,B99: unknown Sentinel-2 band 'B99'")


def test_chip_prints_what_it_wrote(tmp_path, capsys) -> None:
    data = np.random.default_rng(0).integers(1, 5000, (3, 40, 40), dtype=np.uint16)
    scene = write_geotiff(
        tmp_path / "s.tif",
        data,
        transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
        nodata=0,
        descriptions=("B02", "B03", "B04"),
    )
    out = tmp_path / "c.zarr"
    main(["chip", "--scenes", str(scene), "--bands", "B02,B03,B04", "--size", "16", "--n-unlabelled", "3",
          "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [f"chip: 0 labelled chips (0 train, none; 0 val, none) and 3 unlabelled chips in {out}"]


@pytest.mark.skipif(not (DEMO / "stac" / "catalog.json").exists(), reason="demo resources not built")
def test_the_whole_chain_through_the_cli(tmp_path) -> None:
    """search -> fetch -> chip -> train -> predict -> polygonize -> merge -> evaluate, as a user would type it."""
    run = lambda *args: main([str(a) for a in args])  # noqa: E731
    manifest = tmp_path / "manifest.json"
    run(
        "search",
        "--catalog",
        DEMO / "stac/catalog.json",
        "--collection",
        "sentinel-2-l1c",
        "--aoi",
        DEMO / "aoi/demo_aoi.gpkg",
        "--out",
        manifest,
    )
    scenes = {s["tile"]: s["id"] for s in json.loads(manifest.read_text())["scenes"]}
    assert set(scenes) == {"08WMA", "52WEE"}

    run("fetch", "--manifest", manifest, "--out-dir", tmp_path / "scenes")
    peel, byk = (tmp_path / "scenes" / f"{scenes[t]}.tif" for t in ("08WMA", "52WEE"))
    with rasterio.open(peel) as src:
        assert src.count == 7 and src.descriptions[0] == "B02" and src.shape == (251, 251)

    run(
        "chip",
        "--scenes",
        peel,
        byk,
        "--labels",
        DEMO / "labels/peel_consensus.gpkg",
        "--footprint",
        DEMO / "aoi/peel.geojson",
        "--holdout",
        DEMO / "aoi/peel_holdout.geojson",
        "--unlabelled-scenes",
        byk,
        "--size",
        32,
        "--n-labelled",
        16,
        "--n-unlabelled",
        16,
        "--out",
        tmp_path / "c.zarr",
    )
    run(
        "train",
        "--chips",
        tmp_path / "c.zarr",
        "--out-dir",
        tmp_path / "model",
        "--mode",
        "pixeldino",
        "--steps",
        4,
        "--batch-labelled",
        2,
        "--batch-unlabelled",
        2,
        "--width",
        4,
        "--depth",
        2,
        "--val-every",
        4,
        "--ema-momentum",
        0.9,
        "--threads",
        1,
    )
    model = tmp_path / "model" / "model.safetensors"
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08"] and meta["chip_size"] == 32

    run(
        "predict",
        peel,
        "--model",
        model,
        "--out",
        tmp_path / "prob.tif",
        "--pseudo-out",
        tmp_path / "pseudo.tif",
        "--threads",
        1,
    )
    with rasterio.open(tmp_path / "prob.tif") as src, rasterio.open(tmp_path / "pseudo.tif") as pseudo:
        assert src.shape == (251, 251) and src.nodata == 255
        assert float(src.tags()["THRESHOLD"]) == pytest.approx(meta["threshold"])
        # provenance from the fetched scene travels with the prediction (and on to the polygons)
        assert src.tags()["SCENE_ID"] == scenes["08WMA"] and src.tags()["TILE"] == "08WMA"
        assert src.tags()["DATETIME"].startswith("2021-08-21")
        assert pseudo.read(1).max() < meta["architecture"]["n_pseudo_classes"]
        assert len(pseudo.colormap(1)) >= meta["architecture"]["n_pseudo_classes"]

    # threshold 0 makes every valid pixel RTS: one polygon covering the whole scene (251 x 251 px of 100 m2)
    run("polygonize", tmp_path / "prob.tif", "--out", tmp_path / "peel.gpkg", "--threshold", 0, "--min-area", 0)
    polygons = gpd.read_file(tmp_path / "peel.gpkg", layer="rts")
    assert len(polygons) == 1 and polygons.n_pixels.iloc[0] == 251 * 251
    assert polygons.scene_id.iloc[0] == scenes["08WMA"] and polygons.tile.iloc[0] == "08WMA"
    assert polygons.area_m2.iloc[0] == pytest.approx(251 * 251 * 100, rel=1e-3)

    run("merge", tmp_path / "peel.gpkg", tmp_path / "peel.gpkg", "--out", tmp_path / "merged.gpkg")
    merged = gpd.read_file(tmp_path / "merged.gpkg", layer="rts")
    assert len(merged) == 1 and merged.n_detections.iloc[0] == 2 and merged.crs.to_epsg() == 3413
    assert merged.scenes.iloc[0] == scenes["08WMA"] and merged.first_date.iloc[0] == "2021-08-21"

    run(
        "evaluate",
        "--prediction",
        tmp_path / "prob.tif",
        "--labels",
        DEMO / "labels/peel_consensus.gpkg",
        "--aoi",
        DEMO / "aoi/peel.geojson",
        "--threshold",
        0,
        "--site",
        "Peel",
        "--out",
        tmp_path / "m.json",
    )
    pixel = json.loads((tmp_path / "m.json").read_text())["sites"]["Peel"]["pixel"]
    # everything predicted RTS: recall 1, IoU = precision = the consensus RTS fraction of the AOI (3,633 px)
    assert pixel["recall"] == 1.0
    assert pixel["iou"] == pytest.approx(pixel["precision"]) and pixel["tp"] == 3633
    assert np.isclose(pixel["iou"], 3633 / pixel["n_pixels"])
