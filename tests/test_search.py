"""Tests for pixeldino.search against the shipped demo catalog and a synthetic Earth-Search-like catalog."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pystac
import pytest
from shapely.geometry import box, mapping

from pixeldino.errors import InputError, NoScenesError
from pixeldino.search import item_tile, normalise_tile, read_manifest, search_scenes, write_manifest

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
CATALOG = DEMO / "stac" / "catalog.json"
RGBN = ["B02", "B03", "B04", "B08"]
needs_demo = pytest.mark.skipif(not CATALOG.exists(), reason="resources/demo is not built")


@needs_demo
def test_demo_catalog_finds_both_scenes() -> None:
    m = search_scenes(CATALOG, collection="sentinel-2-l1c", datetime="2021-06-01/2021-09-30", bands=RGBN)
    assert m["pixeldino_manifest"] == 1
    scenes = {s["tile"]: s for s in m["scenes"]}
    assert sorted(scenes) == ["08WMA", "52WEE"]
    peel = scenes["08WMA"]
    assert peel["id"] == "S2_08WMA_20210821"
    assert peel["crs"] == "EPSG:32608" and scenes["52WEE"]["crs"] == "EPSG:32652"
    assert peel["cloud_cover"] == 2.0
    assert peel["processing_baseline"] == "03.00"
    assert peel["datetime"].startswith("2021-08-21T21:00:19")
    assert list(peel["assets"]) == RGBN
    for href in peel["assets"].values():
        assert Path(href).is_absolute() and Path(href).exists()
    assert Path(peel["assets"]["B04"]).name == "B04.tif"
    west, south, east, north = peel["bbox"]
    assert -136 < west < east < -135 and 68 < south < north < 68.1


@needs_demo
def test_tile_filter_accepts_any_spelling() -> None:
    m = search_scenes(CATALOG, tiles=["T8WMA"], bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]
    m = search_scenes(CATALOG, tiles=["MGRS-52WEE"], bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["52WEE"]


@needs_demo
def test_date_range_is_inclusive_and_can_exclude_everything() -> None:
    m = search_scenes(CATALOG, datetime="2021-08-21/2021-08-21", bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]
    with pytest.raises(NoScenesError) as err:
        search_scenes(CATALOG, tiles=["08WMA", "52WEE"], datetime="2022-06-01/2022-09-30", max_cloud_cover=20,
                      bands=RGBN)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("08WMA", "52WEE", "2022-06-01/2022-09-30", "20%", "widen the dates", "max_cloud_cover"):
        assert part in msg


@needs_demo
def test_cloud_limit() -> None:
    m = search_scenes(CATALOG, max_cloud_cover=3.0, bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]
    with pytest.raises(NoScenesError, match="cloud cover <= 1%"):
        search_scenes(CATALOG, max_cloud_cover=1.0, bands=RGBN)


@needs_demo
def test_aoi_filter() -> None:
    m = search_scenes(CATALOG, aoi=DEMO / "aoi" / "bykovsky.geojson", bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["52WEE"]
    with pytest.raises(NoScenesError, match="AOI"):
        search_scenes(CATALOG, aoi=box(10, 50, 11, 51), bands=RGBN)


@needs_demo
def test_missing_band_names_item_and_band() -> None:
    with pytest.raises(InputError, match=r"S2_08WMA_20210821.*B11"):
        search_scenes(CATALOG, bands=["B04", "swir16"])
    m = search_scenes(CATALOG, tiles=["52WEE"], bands=["B04", "swir16"])
    assert list(m["scenes"][0]["assets"]) == ["B04", "B11"]


@needs_demo
def test_manifest_round_trip(tmp_path: Path) -> None:
    m = search_scenes(CATALOG, bands=RGBN)
    path = write_manifest(m, tmp_path / "manifest.json")
    assert read_manifest(path) == m
    bad = tmp_path / "bad.json"
    bad.write_text('{"scenes": []}')
    with pytest.raises(InputError, match="not a pixeldino scene manifest"):
        read_manifest(bad)


def _earth_search_like_item(item_id: str, tile: str, day: int, cloud: float, root: Path) -> pystac.Item:
    """An item shaped like Earth Search's sentinel-2-l1c: COG and JPEG2000 assets for each band."""
    item = pystac.Item(
        id=item_id, geometry=mapping(box(-135.7, 68.0, -135.6, 68.1)), bbox=[-135.7, 68.0, -135.6, 68.1],
        datetime=dt.datetime(2021, 7, day, 21, tzinfo=dt.timezone.utc),
        properties={"eo:cloud_cover": cloud, "grid:code": f"MGRS-{tile}", "proj:epsg": 32608,
                    "s2:snow_ice_percentage": 1.5},
        collection="sentinel-2-l1c",
    )
    for key, name in (("red", "B04"), ("nir", "B08")):
        item.add_asset(key, pystac.Asset(str(root / f"{item_id}_{name}.tif"), media_type=pystac.MediaType.COG,
                                         extra_fields={"eo:bands": [{"name": name, "common_name": key}]}))
        item.add_asset(f"{key}-jp2", pystac.Asset(str(root / f"{item_id}_{name}.jp2"),
                                                  media_type=pystac.MediaType.JPEG2000,
                                                  extra_fields={"eo:bands": [{"name": name, "common_name": key}]}))
    item.add_asset("thumbnail", pystac.Asset(str(root / "thumb.jpg"), roles=["thumbnail"]))
    return item


def test_ranking_and_asset_choice_on_synthetic_catalog(tmp_path: Path) -> None:
    catalog = pystac.Catalog("synthetic", "synthetic")
    for item_id, tile, day, cloud in [
        ("S2A_8WMA_20210701_0_L1C", "08WMA", 1, 30.0), ("S2B_8WMA_20210706_0_L1C", "08WMA", 6, 4.0),
        ("S2A_8WMA_20210711_0_L1C", "08WMA", 11, 4.0), ("S2A_8WMB_20210711_0_L1C", "08WMB", 11, 60.0),
    ]:
        catalog.add_item(_earth_search_like_item(item_id, tile, day, cloud, tmp_path))
    catalog.normalize_and_save(str(tmp_path / "stac"), pystac.CatalogType.SELF_CONTAINED)

    m = search_scenes(tmp_path / "stac", max_scenes_per_tile=2, max_cloud_cover=50, bands=["red", "B08"])
    assert [(s["tile"], s["cloud_cover"], s["datetime"][:10]) for s in m["scenes"]] == [
        ("08WMA", 4.0, "2021-07-06"), ("08WMA", 4.0, "2021-07-11"),
    ]
    first = m["scenes"][0]
    assert first["assets"]["B04"].endswith("_B04.tif")  # the COG wins over the JPEG2000 copy
    assert first["snow_cover"] == 1.5 and first["crs"] == "EPSG:32608"


def test_tile_names() -> None:
    assert normalise_tile("t8wma") == "08WMA"
    item = pystac.Item("S2B_52WEE_20210721_0_L1C", None, None, dt.datetime(2021, 7, 21), {})
    assert item_tile(item) == "52WEE"
