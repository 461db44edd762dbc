"""Tests for pixeldino.search against the shipped demo catalog and a synthetic Earth-Search-like catalog."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pystac
import pytest
from shapely.geometry import box, mapping

from pixeldino.errors import ConfigError, InputError, NoScenesError
from pixeldino.items import band_assets, item_tile, scl_asset
from pixeldino.manifest import read_manifest, write_manifest
from pixeldino.providers import StacParams
from pixeldino.search import SearchParams, run_search, search_scenes
from pixeldino.tiles import normalise_tile

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
CATALOG = DEMO / "stac" / "catalog.json"
RGBN = ["B02", "B03", "B04", "B08"]
needs_demo = pytest.mark.skipif(not CATALOG.exists(), reason="resources/demo is not built")


def search(catalog: Path, *, collection: str | None = None, bands: list[str] | None = None, **params) -> dict:
    """:func:`search_scenes` on a local catalog; ``params`` are :class:`SearchParams` fields."""
    return search_scenes(SearchParams(**params), StacParams(catalog=str(catalog), collection=collection), bands=bands)


@needs_demo
def test_demo_catalog_finds_both_scenes() -> None:
    m = search(CATALOG, collection="sentinel-2-l1c", datetime="2021-06-01/2021-09-30", bands=RGBN)
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
    m = search(CATALOG, tiles=["T8WMA"], bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]
    m = search(CATALOG, tiles=["MGRS-52WEE"], bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["52WEE"]


@needs_demo
def test_date_range_is_inclusive_and_can_exclude_everything() -> None:
    m = search(CATALOG, datetime="2021-08-21/2021-08-21", bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]
    with pytest.raises(NoScenesError) as err:
        search(CATALOG, tiles=["08WMA", "52WEE"], datetime="2022-06-01/2022-09-30", max_cloud_cover=20, bands=RGBN)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("08WMA", "52WEE", "2022-06-01/2022-09-30", "20%", "widen the dates", "max_cloud_cover"):
        assert part in msg


@needs_demo
def test_cloud_limit() -> None:
    m = search(CATALOG, max_cloud_cover=3.0, bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["08WMA"]
    with pytest.raises(NoScenesError, match="cloud cover <= 1%"):
        search(CATALOG, max_cloud_cover=1.0, bands=RGBN)


@needs_demo
def test_aoi_filter() -> None:
    m = search(CATALOG, aoi=DEMO / "aoi" / "bykovsky.geojson", bands=RGBN)
    assert [s["tile"] for s in m["scenes"]] == ["52WEE"]
    with pytest.raises(NoScenesError, match="AOI"):
        search(CATALOG, aoi=[10, 50, 11, 51], bands=RGBN)


@needs_demo
def test_missing_band_names_item_and_band() -> None:
    with pytest.raises(InputError, match=r"S2_08WMA_20210821.*B11"):
        search(CATALOG, bands=["B04", "swir16"])
    m = search(CATALOG, tiles=["52WEE"], bands=["B04", "swir16"])
    assert list(m["scenes"][0]["assets"]) == ["B04", "B11"]


@needs_demo
def test_manifest_round_trip(tmp_path: Path) -> None:
    m = search(CATALOG, bands=RGBN)
    path = write_manifest(m, tmp_path / "manifest.json")
    assert read_manifest(path) == m
    bad = tmp_path / "bad.json"
    bad.write_text('{"scenes": []}')
    with pytest.raises(InputError, match="not a pixeldino scene manifest"):
        read_manifest(bad)


def _earth_search_like_item(item_id: str, tile: str, day: int, cloud: float, root: Path) -> pystac.Item:
    """An item shaped like Earth Search's sentinel-2-l1c: COG and JPEG2000 assets for each band."""
    item = pystac.Item(
        id=item_id,
        geometry=mapping(box(-135.7, 68.0, -135.6, 68.1)),
        bbox=[-135.7, 68.0, -135.6, 68.1],
        datetime=dt.datetime(2021, 7, day, 21, tzinfo=dt.timezone.utc),
        properties={
            "eo:cloud_cover": cloud,
            "grid:code": f"MGRS-{tile}",
            "proj:epsg": 32608,
            "s2:snow_ice_percentage": 1.5,
        },
        collection="sentinel-2-l1c",
    )
    for key, name in (("red", "B04"), ("nir", "B08")):
        item.add_asset(
            key,
            pystac.Asset(
                str(root / f"{item_id}_{name}.tif"),
                media_type=pystac.MediaType.COG,
                extra_fields={"eo:bands": [{"name": name, "common_name": key}]},
            ),
        )
        item.add_asset(
            f"{key}-jp2",
            pystac.Asset(
                str(root / f"{item_id}_{name}.jp2"),
                media_type=pystac.MediaType.JPEG2000,
                extra_fields={"eo:bands": [{"name": name, "common_name": key}]},
            ),
        )
    item.add_asset("thumbnail", pystac.Asset(str(root / "thumb.jpg"), roles=["thumbnail"]))
    return item


def test_ranking_and_asset_choice_on_synthetic_catalog(tmp_path: Path) -> None:
    catalog = pystac.Catalog("synthetic", "synthetic")
    for item_id, tile, day, cloud in [
        ("S2A_8WMA_20210701_0_L1C", "08WMA", 1, 30.0),
        ("S2B_8WMA_20210706_0_L1C", "08WMA", 6, 4.0),
        ("S2A_8WMA_20210711_0_L1C", "08WMA", 11, 4.0),
        ("S2A_8WMB_20210711_0_L1C", "08WMB", 11, 60.0),
    ]:
        catalog.add_item(_earth_search_like_item(item_id, tile, day, cloud, tmp_path))
    catalog.normalize_and_save(str(tmp_path / "stac"), pystac.CatalogType.SELF_CONTAINED)

    m = search(tmp_path / "stac", max_scenes_per_tile=2, max_cloud_cover=50, bands=["red", "B08"])
    assert [(s["tile"], s["cloud_cover"], s["datetime"][:10]) for s in m["scenes"]] == [
        ("08WMA", 4.0, "2021-07-06"),
        ("08WMA", 4.0, "2021-07-11"),
    ]
    first = m["scenes"][0]
    assert first["assets"]["B04"].endswith("_B04.tif")  # the COG wins over the JPEG2000 copy
    assert first["snow_cover"] == 1.5 and first["crs"] == "EPSG:32608"


def test_tile_names() -> None:
    assert normalise_tile("t8wma") == "08WMA"
    item = pystac.Item("S2B_52WEE_20210721_0_L1C", None, None, dt.datetime(2021, 7, 21), {})
    assert item_tile(item) == "52WEE"


def _l2a_item(
    item_id: str,
    tile: str,
    day: int,
    root: Path,
    *,
    month: int = 7,
    year: int = 2023,
    cloud: float = 5.0,
    snow: float | None = None,
    nodata: float | None = None,
    epsg: int = 32608,
    bands: tuple[str, ...] = ("B04", "B08"),
    scl: bool = True,
) -> pystac.Item:
    """An item shaped like Earth Search's sentinel-2-l2a (common-name keys, SCL asset)."""
    props = {
        "eo:cloud_cover": cloud,
        "grid:code": f"MGRS-{tile}",
        "proj:epsg": epsg,
        "s2:processing_baseline": "05.09",
        "s2:product_type": "S2MSI2A",
    }
    if snow is not None:
        props["s2:snow_ice_percentage"] = snow
    if nodata is not None:
        props["s2:nodata_pixel_percentage"] = nodata
    item = pystac.Item(
        id=item_id,
        geometry=mapping(box(-135.7, 68.0, -135.6, 68.1)),
        bbox=[-135.7, 68.0, -135.6, 68.1],
        datetime=dt.datetime(year, month, day, 21, tzinfo=dt.timezone.utc),
        properties=props,
        collection="sentinel-2-l2a",
    )
    keys = {"B04": "red", "B08": "nir", "B11": "swir16"}
    for band in bands:
        item.add_asset(
            keys[band],
            pystac.Asset(str(root / f"{item_id}_{band}.tif"), media_type=pystac.MediaType.COG, roles=["data"]),
        )
    if scl:
        item.add_asset(
            "scl", pystac.Asset(str(root / f"{item_id}_SCL.tif"), media_type=pystac.MediaType.COG, roles=["data"])
        )
    return item


def _catalog(tmp_path: Path, items: list[pystac.Item]) -> Path:
    catalog = pystac.Catalog("l2a", "synthetic L2A")
    for item in items:
        catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path / "stac"), pystac.CatalogType.SELF_CONTAINED)
    return tmp_path / "stac" / "catalog.json"


def test_clear_land_ranking_snow_limit_and_manifest_fields(tmp_path: Path) -> None:
    cat = _catalog(
        tmp_path,
        [
            _l2a_item("S2A_8WMA_20230701_0_L2A", "08WMA", 1, tmp_path, cloud=2.0, snow=30.0),  # clear 0.68
            _l2a_item("S2A_8WMA_20230711_0_L2A", "08WMA", 11, tmp_path, cloud=8.0, snow=0.0),  # clear 0.92
            _l2a_item("S2A_8WMA_20230721_0_L2A", "08WMA", 21, tmp_path, cloud=1.0, nodata=60.0),  # clear 0.396
        ],
    )
    m = search(cat, max_scenes_per_tile=3, bands=["B04", "nir"])
    assert [s["datetime"][:10] for s in m["scenes"]] == ["2023-07-11", "2023-07-01", "2023-07-21"]
    best = m["scenes"][0]
    assert best["clear_fraction"] == pytest.approx(0.92) and best["product_level"] == "L2A"
    assert best["processing_baseline"] == "05.09" and best["provider"] == "local"
    assert best["mask_asset"].endswith("_SCL.tif") and list(best["assets"]) == ["B04", "B08"]
    m = search(cat, max_scenes_per_tile=3, max_snow_cover=10, bands=["B04"])
    assert "2023-07-01" not in [s["datetime"][:10] for s in m["scenes"]]
    with pytest.raises(NoScenesError, match=r"snow cover <= 1%.*relax max_cloud_cover or max_snow_cover"):
        search(cat, max_cloud_cover=0.5, max_snow_cover=1, bands=["B04"])


def test_years_and_months_windows(tmp_path: Path) -> None:
    cat = _catalog(
        tmp_path,
        [
            _l2a_item("S2A_8WMA_20210715_0_L2A", "08WMA", 15, tmp_path, year=2021),
            _l2a_item("S2A_8WMA_20220715_0_L2A", "08WMA", 15, tmp_path, year=2022),
            _l2a_item("S2A_8WMA_20230915_0_L2A", "08WMA", 15, tmp_path, year=2023, month=9),
        ],
    )
    m = search(cat, years=[2021, 2023], months=[7, 8], max_scenes_per_tile=5, bands=["B04"])
    assert [s["datetime"][:10] for s in m["scenes"]] == ["2021-07-15"]
    m = search(cat, years=[2021, 2023], months=[7, 9], max_scenes_per_tile=5, bands=["B04"])
    assert sorted(s["datetime"][:10] for s in m["scenes"]) == ["2021-07-15", "2023-09-15"]
    assert m["query"]["windows"] == [
        "2021-07-01/2021-07-31",
        "2021-09-01/2021-09-30",
        "2023-07-01/2023-07-31",
        "2023-09-01/2023-09-30",
    ]


def test_unusable_scenes_are_skipped_and_recorded(tmp_path: Path) -> None:
    cat = _catalog(
        tmp_path,
        [
            _l2a_item("S2A_8WMA_20230701_0_L2A", "08WMA", 1, tmp_path, cloud=0.0, epsg=32609),  # wrong UTM zone
            _l2a_item("S2A_8WMA_20230705_0_L2A", "08WMA", 5, tmp_path, cloud=0.0, nodata=100.0),  # no data
            _l2a_item("S2A_8WMA_20230709_0_L2A", "08WMA", 9, tmp_path, cloud=0.5, bands=("B04",)),  # lacks B08
            _l2a_item("S2A_8WMA_20230711_0_L2A", "08WMA", 11, tmp_path, cloud=9.0),
        ],
    )
    m = search(cat, bands=["B04", "B08"])
    assert [s["stac_id"] for s in m["scenes"]] == ["S2A_8WMA_20230711_0_L2A"]
    reasons = {r["stac_id"]: r["reason"] for r in m["rejected"]}
    assert "unexpected CRS EPSG:32609" in reasons["S2A_8WMA_20230701_0_L2A"]
    assert "no valid data" in reasons["S2A_8WMA_20230705_0_L2A"]
    assert "B08" in reasons["S2A_8WMA_20230709_0_L2A"]


def test_bbox_aoi_and_circumpolar(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, [_l2a_item("S2A_8WMA_20230711_0_L2A", "08WMA", 11, tmp_path)])
    m = search(cat, aoi=[-136.0, 67.9, -135.5, 68.2], bands=["B04"])
    assert m["query"]["aoi"] == "bbox -136,67.9,-135.5,68.2" and len(m["scenes"]) == 1
    # the circumpolar domain is the high Arctic: Peel (08WMA) lies outside it
    with pytest.raises(NoScenesError, match=r"tiles .* and \d+ more"):
        search(cat, aoi="circumpolar", bands=["B04"])


def test_cdse_style_assets_prefer_native_resolution(tmp_path: Path) -> None:
    item = _l2a_item("S2B_MSIL2A_20230711_T08WMA", "08WMA", 11, tmp_path, bands=(), scl=False)
    for key in ("B05_60m", "B05_20m", "B04_20m", "B04_10m", "SCL_20m"):
        item.add_asset(
            key,
            pystac.Asset(
                str(tmp_path / f"{key}.jp2"),
                media_type="image/jp2",
                roles=["data"],
                extra_fields={"eo:bands": [{"name": key.split("_")[0]}]},
            ),
        )
    assets = band_assets(item)
    assert assets["B05"].endswith("B05_20m.jp2") and assets["B04"].endswith("B04_10m.jp2")
    assert scl_asset(item).endswith("SCL_20m.jp2")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"datetime": "2021-07-01/2021-08-31", "years": [2021]}, "both set"),
        ({"datetime": "July 2021"}, "search.datetime: 'July 2021' is not ISO 8601"),
        (
            {"datetime": "2021-09-01/2021-07-01"},
            "search.datetime: the range '2021-09-01/2021-07-01' ends before it starts; .* e.g. '2021-07-01/2021-09-01'",
        ),
        ({"years": [2021], "months": [0, 7]}, "month numbers 1-12"),
        ({"max_scenes_per_tile": 0}, "at least 1"),
        ({"tiles": ["08WMA", "Peel"]}, "'Peel' is not an MGRS tile id"),
    ],
)
def test_search_params_reject_bad_values_in_one_line(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        SearchParams(**params)
    assert "\n" not in str(err.value)


def test_search_params_defaults_and_normalisation(tmp_path: Path) -> None:
    p = SearchParams(aoi=tmp_path / "aoi.gpkg", tiles=["t8wma", "MGRS-52WEE"])
    assert p.aoi == str(tmp_path / "aoi.gpkg") and p.tiles == ["08WMA", "52WEE"]
    assert SearchParams(aoi=(-136, 67.9, -135.5, 68.2)).aoi == [-136.0, 67.9, -135.5, 68.2]
    # neutral defaults: no demo area or dates
    d = SearchParams()
    assert (d.aoi, d.datetime, d.years, d.months, d.max_cloud_cover) == (None, None, [], [7, 8], 20.0)


@needs_demo
def test_run_search_writes_the_manifest_or_takes_a_premade_one(tmp_path: Path) -> None:
    stac = StacParams(catalog=str(CATALOG))
    searched = run_search(SearchParams(tiles=["08WMA"]), stac, bands=RGBN, out_manifest=tmp_path / "a.json")
    assert read_manifest(tmp_path / "a.json") == searched and [s["tile"] for s in searched["scenes"]] == ["08WMA"]
    # a pre-made manifest replaces the search (the catalog is never opened)
    premade = run_search(
        SearchParams(manifest=str(tmp_path / "a.json")),
        StacParams(catalog="/nowhere"),
        bands=RGBN,
        out_manifest=tmp_path / "b.json",
    )
    assert premade == searched and read_manifest(tmp_path / "b.json") == searched
