"""Tests for pixeldino.fetch: stacking band files into one 10 m COG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from pixeldino.errors import InputError
from pixeldino.fetch import fetch_scene
from pixeldino.search import search_scenes

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "resources" / "demo" / "stac" / "catalog.json"
SOURCE_CHIP = REPO.parent / "shared" / "data" / "rts_digitization" / "Peel" / "data" / (
    "S2_20210821T210019_20210821T210020_T08WMA.tif"
)
PEEL_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08"]
needs_demo = pytest.mark.skipif(not CATALOG.exists(), reason="resources/demo is not built")


def _write_band(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32608") -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint16", crs=crs, transform=transform, nodata=0) as dst:
        dst.write(data, 1)
    return str(path)


@pytest.fixture
def synthetic_scene(tmp_path: Path) -> dict:
    """A 40 x 40 px 10 m band and a 20 x 20 px 20 m band over the same 400 m square."""
    t10 = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 7_500_400.0)
    t20 = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 7_500_400.0)
    rr, cc = np.mgrid[0:40, 0:40]
    b04 = (1000 + 7 * rr + 3 * cc).astype(np.uint16)
    r2, c2 = np.mgrid[0:20, 0:20]
    # a plane in map coordinates: value = 2000 + 4 * (row index at 10 m) + 2 * (col index at 10 m)
    # sampled at the 20 m pixel centres (10 m indices 2*r2 + 0.5, 2*c2 + 0.5)
    b05 = (2000 + 4 * (2 * r2 + 0.5) + 2 * (2 * c2 + 0.5)).astype(np.float64)
    assert np.allclose(b05, np.round(b05))
    return {
        "id": "SYN_08WMA_20210701",
        "tile": "08WMA",
        "datetime": "2021-07-01T21:00:00+00:00",
        "crs": "EPSG:32608",
        "processing_baseline": "03.00",
        "assets": {
            "B04": _write_band(tmp_path / "B04.tif", b04, t10),
            "B05": _write_band(tmp_path / "B05.tif", b05.astype(np.uint16), t20),
        },
        "_b04": b04,
    }


@needs_demo
def test_fetch_demo_is_pixel_identical(tmp_path: Path) -> None:
    scene = search_scenes(CATALOG, tiles=["08WMA"], bands=PEEL_BANDS)["scenes"][0]
    out = fetch_scene(scene, PEEL_BANDS, tmp_path / "peel.tif")
    with rasterio.open(out) as ds:
        assert ds.count == 7 and ds.dtypes[0] == "uint16" and ds.nodata == 0
        assert ds.descriptions == tuple(PEEL_BANDS)
        assert ds.crs.to_epsg() == 32608 and ds.shape == (251, 251)
        assert ds.tags()["scene_id"] == "S2_08WMA_20210821" and ds.tags()["tile"] == "08WMA"
        stacked = ds.read()
    for i, band in enumerate(PEEL_BANDS):
        with rasterio.open(scene["assets"][band]) as src:
            assert np.array_equal(stacked[i], src.read(1)), band
    if SOURCE_CHIP.exists():  # the original export, when the shared data are around
        with rasterio.open(SOURCE_CHIP) as src:
            assert np.array_equal(stacked, src.read())
    sidecar = json.loads((tmp_path / "peel.json").read_text())
    assert sidecar["scene_id"] == "S2_08WMA_20210821" and sidecar["bands"] == PEEL_BANDS
    assert sidecar["shape"] == [251, 251] and sidecar["crs"] == "EPSG:32608"
    assert sidecar["transform"] == [10.0, 0.0, 470890.0, 0.0, -10.0, 7550020.0]
    assert sidecar["hrefs"]["B02"] == scene["assets"]["B02"]


@needs_demo
def test_fetch_demo_cut_to_aoi(tmp_path: Path) -> None:
    scene = search_scenes(CATALOG, tiles=["08WMA"], bands=["B04"])["scenes"][0]
    # a 4326 box inside the chip; the output is its bounding box snapped outward to the 10 m grid
    aoi = box(-135.68, 68.045, -135.66, 68.055)
    out = fetch_scene(scene, ["B04"], tmp_path / "cut.tif", aoi=aoi)
    with rasterio.open(out) as ds, rasterio.open(scene["assets"]["B04"]) as src:
        assert ds.shape[0] < 251 and ds.shape[1] < 251
        col = (ds.transform.c - src.transform.c) / 10.0
        row = (src.transform.f - ds.transform.f) / 10.0
        assert col == int(col) and row == int(row)
        window = rasterio.windows.Window(int(col), int(row), ds.width, ds.height)
        assert np.array_equal(ds.read(1), src.read(1, window=window))


def test_20m_band_is_resampled_bilinearly_to_10m(tmp_path: Path, synthetic_scene: dict) -> None:
    out = fetch_scene(synthetic_scene, ["B04", "B05"], tmp_path / "stack.tif")
    with rasterio.open(out) as ds:
        assert ds.shape == (40, 40) and ds.res == (10.0, 10.0)
        assert ds.transform == Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 7_500_400.0)
        b04, b05 = ds.read(1), ds.read(2)
    assert np.array_equal(b04, synthetic_scene["_b04"])
    # bilinear interpolation reproduces a plane exactly away from the border
    rr, cc = np.mgrid[0:40, 0:40]
    expected = 2000 + 4 * rr + 2 * cc
    inner = np.s_[2:-2, 2:-2]
    assert np.abs(b05[inner].astype(int) - expected[inner]).max() <= 1
    assert len(np.unique(b05[inner])) > len(np.unique(b05[inner][::2, ::2]))  # not 2 x 2 blocks


def test_missing_band_asset(tmp_path: Path, synthetic_scene: dict) -> None:
    with pytest.raises(InputError, match=r"SYN_08WMA_20210701 has no asset for band\(s\) B08"):
        fetch_scene(synthetic_scene, ["B04", "B08"], tmp_path / "x.tif")


def test_crs_mismatch(tmp_path: Path, synthetic_scene: dict) -> None:
    synthetic_scene["crs"] = "EPSG:32609"
    with pytest.raises(InputError, match="manifest says EPSG:32609"):
        fetch_scene(synthetic_scene, ["B04"], tmp_path / "x.tif")


def test_corrupt_file_is_one_line_error_and_leaves_nothing(tmp_path: Path, synthetic_scene: dict) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    corrupt = tmp_path / "B05.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing else
    with pytest.raises(InputError) as err:
        fetch_scene(synthetic_scene, ["B04", "B05"], out_dir / "scene.tif")
    assert str(corrupt) in str(err.value) and "\n" not in str(err.value)
    assert list(out_dir.iterdir()) == []


def test_truncated_file_fails_during_read_and_leaves_nothing(tmp_path: Path, synthetic_scene: dict) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = Path(synthetic_scene["assets"]["B04"])
    big = np.random.default_rng(0).integers(1, 10000, (512, 512), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint16",
                       crs="EPSG:32608", transform=Affine(10, 0, 500_000, 0, -10, 7_500_400), nodata=0,
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write(big, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, tiles cut off
    with pytest.raises(InputError, match="B04"):
        fetch_scene(synthetic_scene, ["B04"], out_dir / "scene.tif")
    assert list(out_dir.iterdir()) == []


@needs_demo
def test_multi_site_aoi_keeps_the_part_near_the_scene(tmp_path: Path) -> None:
    # demo_aoi.gpkg holds Peel (Canada) and Bykovsky (Siberia); the Siberian part must not disturb Peel's grid
    aoi = REPO / "resources" / "demo" / "aoi" / "demo_aoi.gpkg"
    scene = search_scenes(CATALOG, tiles=["08WMA"], bands=["B04"])["scenes"][0]
    out = fetch_scene(scene, ["B04"], tmp_path / "peel.tif", aoi=aoi)
    with rasterio.open(out) as ds:
        # the 2.5 km AOI starts 1.9 m inside the chip's first pixel: snapped outward, the whole chip is kept
        assert ds.shape == (251, 251) and ds.transform.c == 470890.0
    with pytest.raises(InputError, match="does not overlap scene S2_08WMA_20210821"):
        fetch_scene(scene, ["B04"], tmp_path / "none.tif", aoi=box(10, 50, 11, 51))
