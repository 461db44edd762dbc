"""The STAC catalog of a run's outputs: structure, provenance, relative hrefs, offline validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from test_change import YEARS, write_year

from pixeldino.catalog import PROJECTION, RASTER, build_catalog, check_extension_fields, validate_catalog
from pixeldino.change import ChangeParams, run_change
from pixeldino.errors import InputError
from pixeldino.merge import MergeParams, run_merge


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("catalog")
    scenes, polygons = zip(*(write_year(tmp, y) for y in YEARS[:2]))
    # the first scene has an SCL quality mask, named by its sidecar
    with rasterio.open(scenes[0]) as src:
        profile = dict(src.profile, dtype="uint8", nodata=None)
    mask = scenes[0].with_name(scenes[0].stem + "_mask.tif")
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
    side = json.loads(scenes[0].with_suffix(".json").read_text())
    side.update(
        quality_mask=mask.name, stac_id="S2A_MSIL2A_20190715T200000_N0213_R000_T08WMA", collection="sentinel-2-l2a"
    )
    scenes[0].with_suffix(".json").write_text(json.dumps(side))
    probs = [p.with_name(p.stem + "_prob.tif") for p in scenes]
    run_merge(MergeParams(), list(polygons), tmp / "rts_polygons.gpkg", tmp / "rts_polygons.parquet")
    run_change(
        ChangeParams(),
        MergeParams(),
        list(polygons),
        tmp / "rts_change.gpkg",
        years=list(YEARS[:2]),
        out_tracks_parquet=tmp / "rts_tracks.parquet",
        out_change_png=tmp / "change.png",
    )
    out = tmp / "stac"
    build_catalog(
        out,
        run="synthetic",
        sidecars=[s.with_suffix(".json") for s in scenes],
        probabilities=probs,
        polygons=list(polygons),
        merged={"gpkg": tmp / "rts_polygons.gpkg", "parquet": tmp / "rts_polygons.parquet"},
        change={
            "gpkg": tmp / "rts_change.gpkg",
            "tracks_parquet": tmp / "rts_tracks.parquet",
            "change_png": tmp / "change.png",
        },
    )
    return {"tmp": tmp, "out": out, "scenes": scenes}


def test_catalog_validates_offline(run) -> None:
    assert validate_catalog(run["out"] / "catalog.json") == 1 + 1 + 2 + 2  # catalog, collection, 2 scenes, 2 maps


def test_catalog_structure_and_provenance(run) -> None:
    cat = pystac.Catalog.from_file(str(run["out"] / "catalog.json"))
    collection = next(cat.get_children())
    assert collection.id == "pixeldino-synthetic"
    items = {i.id: i for i in collection.get_items()}
    assert set(items) == {"S2A_20190715_T08WMA", "S2A_20210715_T08WMA", "rts-merged", "rts-tracks"}
    first = items["S2A_20190715_T08WMA"]
    assert set(first.assets) == {"probability", "quality_mask", "polygons"}
    assert "quality_mask" not in items["S2A_20210715_T08WMA"].assets  # no SCL, no mask asset
    assert PROJECTION in first.stac_extensions and RASTER in first.stac_extensions
    assert first.properties["proj:code"] == "EPSG:32608" and first.properties["proj:shape"] == [400, 400]
    band = first.assets["probability"].extra_fields["raster:bands"][0]
    assert band["data_type"] == "uint8" and band["nodata"] == 255 and band["scale"] == pytest.approx(1 / 254)
    assert first.properties["pixeldino:model"] == "synthetic" and first.properties["pixeldino:threshold"] == 0.5
    assert first.properties["pixeldino:input_items"] == ["S2A_MSIL2A_20190715T200000_N0213_R000_T08WMA"]
    assert "pixeldino" in first.properties["processing:software"]
    tracks = items["rts-tracks"]
    assert set(tracks.assets) == {"gpkg", "tracks_parquet", "change_png"}
    assert len(tracks.properties["pixeldino:input_items"]) == 2
    # self-contained: relative hrefs that resolve
    raw = json.loads((run["out"] / "pixeldino-synthetic" / "rts-merged" / "rts-merged.json").read_text())
    assert all(not a["href"].startswith("/") for a in raw["assets"].values())
    for item in items.values():
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).exists(), asset.href


def test_catalog_moved_elsewhere_still_resolves(run, tmp_path) -> None:
    copy = tmp_path / "published"
    shutil.copytree(run["tmp"], copy, ignore=shutil.ignore_patterns("*.gpkg-journal"))
    cat = pystac.Catalog.from_file(str(copy / "stac" / "catalog.json"))
    for item in cat.get_items(recursive=True):
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_relative_to(copy)


def test_invalid_items_fail_validation(run, tmp_path) -> None:
    broken = tmp_path / "stac"
    shutil.copytree(run["out"], broken)
    item = broken / "pixeldino-synthetic" / "S2A_20190715_T08WMA" / "S2A_20190715_T08WMA.json"
    data = json.loads(item.read_text())
    data["properties"]["proj:shape"] = [400]
    item.write_text(json.dumps(data))
    with pytest.raises(InputError, match="proj:shape"):
        validate_catalog(broken / "catalog.json")
    del data["properties"]["datetime"]  # core schema: an item needs a datetime
    data["properties"]["proj:shape"] = [400, 400]
    item.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not valid STAC"):
        validate_catalog(broken / "catalog.json")
    assert check_extension_fields({"properties": {"processing:software": {"pixeldino": 1}}})
