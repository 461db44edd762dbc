"""Terrain layers from a DEM: warping onto the scene's 10 m grid (from a file or a local STAC catalog), slope and
aspect of planes, relative elevation of a bump, and the uint16 encoding of every layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterfiles import write_geotiff
from rasterio.transform import from_origin
from shapely.geometry import box, mapping

from pixeldino.auxlayers import AuxParams, add_aux_layers, dem_on_grid
from pixeldino.errors import InputError
from pixeldino.terrain import ENCODINGS, relative_elevation

UTM = "EPSG:32608"
DATES = {"start_datetime": "2021-04-22T00:00:00Z", "end_datetime": "2021-04-22T00:00:00Z"}  # a DEM's epoch
X0, Y0 = 500_000.0, 7_550_000.0  # top-left corner of the 10 m test scenes (UTM 8N, Peel plateau)


def write_raster(path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: float | None = None) -> Path:
    """A one-band float32 GeoTIFF (a DEM)."""
    return write_geotiff(path, data.astype(np.float32), transform=transform, crs=crs, nodata=nodata)


def write_scene(path: Path, size: int, bands: tuple[str, ...] = ("B03", "B04", "B08")) -> Path:
    """A uint16 scene of ``size`` x ``size`` 10 m pixels at (X0, Y0) with valid data everywhere."""
    data = np.random.default_rng(0).integers(200, 4000, (len(bands), size, size)).astype(np.uint16)
    return write_geotiff(path, data, transform=from_origin(X0, Y0, 10, 10), crs=UTM, nodata=0, descriptions=bands)


def layer(scene: Path, name: str) -> np.ndarray:
    """A layer of the scene, decoded to physical values with the band's own GDAL scale and offset (NaN: no data)."""
    with rasterio.open(scene) as src:
        i = src.descriptions.index(name)
        dn = src.read(i + 1).astype(np.float64)
        value = dn * src.scales[i] + src.offsets[i]
    return np.where(dn == 0, np.nan, value)


# ---------------------------------------------------------------------------------------------------- warping
def lonlat_dem(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The test DEM: linear in longitude and latitude, so bilinear interpolation in EPSG:4326 is exact."""
    return 150.0 + 800.0 * (lon + 136.0) + 500.0 * (lat - 68.0)


def dem_catalog(tmp_path: Path) -> Path:
    """A local STAC catalog of a DEM collection with two EPSG:4326 COG tiles side by side (a seam in the scene)."""
    catalog = pystac.Catalog("dems", "test DEMs")
    collection = pystac.Collection(
        "test-dem", "two DEM tiles", pystac.Extent(pystac.SpatialExtent([[-136.2, 67.9, -135.8, 68.2]]),
                                                   pystac.TemporalExtent([[None, None]])),
    )  # fmt: skip
    res = 1.0 / 3600 * 3  # 3 arc seconds
    for i, (west, east) in enumerate(((-136.2, -136.0), (-136.0, -135.8))):
        width, height = round((east - west) / res), round(0.3 / res)
        transform = from_origin(west, 68.2, res, res)
        cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        lon, lat = transform * (cols, rows)
        path = write_raster(tmp_path / f"dem_{i}.tif", lonlat_dem(lon, lat), transform, "EPSG:4326", nodata=-9999)
        item = pystac.Item(f"dem-{i}", mapping(box(west, 67.9, east, 68.2)), [west, 67.9, east, 68.2], None, DATES)
        item.add_asset("data", pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"]))
        collection.add_item(item)
    # an item far away must not be used
    far = pystac.Item("dem-far", mapping(box(10, 60, 11, 61)), [10, 60, 11, 61], None, DATES)
    far.add_asset("data", pystac.Asset(str(tmp_path / "missing.tif"), roles=["data"]))
    collection.add_item(far)
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(tmp_path / "stac"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return tmp_path / "stac" / "catalog.json"


def test_dem_from_a_local_stac_catalog_is_warped_onto_the_utm_grid(tmp_path: Path) -> None:
    catalog = dem_catalog(tmp_path)
    aux = AuxParams(dem="stac", dem_catalog=str(catalog), dem_collection="test-dem")
    # a 2 km grid of 10 m UTM pixels centred on the seam of the two tiles (longitude -136.0)
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    seam_x, seam_y = to_utm.transform(-136.0, 68.05)
    transform = from_origin(round(seam_x) - 1000.0, round(seam_y) + 1000.0, 10.0, 10.0)
    z, record = dem_on_grid(aux, UTM, transform, 200, 200)
    assert record["source"] == "stac" and record["items"] == ["dem-0", "dem-1"]
    assert record["collection"] == "test-dem" and record["asset"] == "data"
    assert np.isfinite(z).all()
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    for row, col in [(0, 0), (10, 37), (100, 99), (100, 100), (150, 180), (199, 199)]:
        x, y = transform * (col + 0.5, row + 0.5)
        lon, lat = to_lonlat.transform(x, y)
        assert z[row, col] == pytest.approx(lonlat_dem(lon, lat), abs=0.01), (row, col)


def test_no_dem_item_over_the_scene_is_one_line(tmp_path: Path) -> None:
    catalog = dem_catalog(tmp_path)
    aux = AuxParams(dem="stac", dem_catalog=str(catalog), dem_collection="test-dem")
    with pytest.raises(InputError) as err:
        dem_on_grid(aux, UTM, from_origin(300_000, 7_000_000, 10, 10), 50, 50, name="S2_FAR")
    message = str(err.value)
    assert "\n" not in message and "no item of DEM collection test-dem" in message and "S2_FAR" in message


# ---------------------------------------------------------------------------------------------------- derivatives
def test_slope_and_aspect_of_a_plane(tmp_path: Path) -> None:
    # a plane rising 0.12 m per m to the east and falling 0.05 m per m to the north, as a 30 m DEM reaching 600 m
    # beyond the scene (the relative elevation's halo), warped to 10 m bilinearly
    gx, gy = 0.12, -0.05
    t = from_origin(X0 - 600, Y0 + 600, 30, 30)
    cols, rows = np.meshgrid(np.arange(100) + 0.5, np.arange(100) + 0.5)
    x, y = t * (cols, rows)
    dem = write_raster(tmp_path / "plane.tif", 300 + gx * (x - X0) + gy * (y - Y0), t, UTM)
    scene = write_scene(tmp_path / "scene.tif", 120)
    add_aux_layers(scene, AuxParams(dem="file", dem_file=str(dem), terrain=["slope", "aspect", "curvature"]))
    slope, aspect, curvature = layer(scene, "slope"), layer(scene, "aspect"), layer(scene, "curvature")
    expected = np.degrees(np.arctan(np.hypot(gx, gy)))  # 13.0 degrees
    assert np.abs(slope - expected).max() < 0.1
    # the plane faces downhill: west (rising east) and north (falling north): 270 + atan(0.05 / 0.12)
    assert np.abs(aspect - (270.0 + np.degrees(np.arctan2(0.05, 0.12)))).max() < 0.1
    assert np.abs(curvature).max() < 0.02  # a plane has none


def test_relative_elevation_of_a_bump(tmp_path: Path) -> None:
    # a Gaussian hill (12 m high, sigma 40 m) on a plain, DEM on the scene grid
    height, sigma, radius = 12.0, 40.0, 200.0
    size = 121
    t = from_origin(X0, Y0, 10, 10)
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    x, y = t * (cols, rows)
    cx, cy = t * (60.5, 60.5)
    bump = height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    dem = write_raster(tmp_path / "bump.tif", 200.0 + bump, t, UTM)
    scene = write_scene(tmp_path / "scene.tif", size)
    add_aux_layers(scene, AuxParams(dem="file", dem_file=str(dem), terrain=["relative_elevation"],
                                    relative_radius_m=radius))  # fmt: skip
    rel = layer(scene, "relative_elevation")
    # the centre: the bump's height minus its mean over the disk of 200 m around it
    # (analytically h (1 - 2 sigma^2 (1 - exp(-R^2 / 2 sigma^2)) / R^2) = 11.54 m)
    within = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    assert rel[60, 60] == pytest.approx(height - bump[within].mean(), abs=0.02)
    analytic = height * (1 - 2 * sigma**2 * (1 - np.exp(-(radius**2) / (2 * sigma**2))) / radius**2)
    assert rel[60, 60] == pytest.approx(analytic, abs=0.1)
    # far from the hill (its disk misses the hill) the plain is at its own mean
    assert abs(rel[5, 5]) < 0.01 and abs(rel[115, 60]) < 0.01
    # on the unit function: NaN (no data) is left out of the mean and stays no data
    z = np.full((21, 21), 5.0)
    z[10, 10], z[0, :] = 7.0, np.nan
    out = relative_elevation(z, 3.0)
    assert np.isnan(out[0]).all() and out[10, 10] == pytest.approx(2.0 - 2.0 / 29, abs=1e-9)


def test_scene_without_dem_coverage_is_refused_and_left_intact(tmp_path: Path) -> None:
    t = from_origin(X0 + 50_000, Y0, 30, 30)
    dem = write_raster(tmp_path / "elsewhere.tif", np.full((20, 20), 10.0), t, UTM)
    scene = write_scene(tmp_path / "scene.tif", 64)
    before = scene.read_bytes()
    with pytest.raises(InputError, match="has no elevation over scene scene"):
        add_aux_layers(scene, AuxParams(dem="file", dem_file=str(dem)))
    assert scene.read_bytes() == before


# ---------------------------------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("name", list(ENCODINGS))
def test_encoding_round_trip(name: str) -> None:
    enc = ENCODINGS[name]
    values = np.linspace(enc.low, enc.high, 1001)
    dn = enc.encode(values)
    assert dn.dtype == np.uint16 and dn.min() == 1 and dn.max() == enc.max_dn <= 65535
    np.testing.assert_allclose(enc.decode(dn), values, atol=enc.step / 2 + 1e-9)
    # GDAL's scale and offset give the same values
    np.testing.assert_allclose(dn * enc.scale + enc.offset, enc.decode(dn), rtol=0, atol=1e-9)
    # out of range: clipped; NaN: no data (0) and back
    assert enc.encode(np.array([enc.low - 50, enc.high + 50])).tolist() == [1, enc.max_dn]
    assert enc.encode(np.array([np.nan])).tolist() == [0] and np.isnan(enc.decode(np.array([0])))[0]
    record = json.loads(json.dumps(enc.describe()))
    assert record["scale"] == enc.scale and record["network"]["band"] == name
