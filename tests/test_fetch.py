"""Tests for pixeldino.fetch (and its helpers): stacking band files into one 10 m COG, resume, composites."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterfiles import write_geotiff
from shapely.geometry import box

from pixeldino.composite import composite_scenes
from pixeldino.errors import ConfigError, InputError
from pixeldino.fetch import FetchParams, fetch_manifest, fetch_scene, run_fetch
from pixeldino.harmonize import harmonization_offset, harmonize_dn
from pixeldino.manifest import write_manifest
from pixeldino.providers import StacParams
from pixeldino.quality import CLEAR, CLOUD, INVALID, SNOW, WATER, find_quality_mask, is_skipped
from pixeldino.search import SearchParams, search_scenes

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "resources" / "demo" / "stac" / "catalog.json"
SOURCE_CHIP = (
    REPO.parent
    / "shared"
    / "data"
    / "rts_digitization"
    / "Peel"
    / "data"
    / ("S2_20210821T210019_20210821T210020_T08WMA.tif")
)
PEEL_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08"]
needs_demo = pytest.mark.skipif(not CATALOG.exists(), reason="resources/demo is not built")


def demo_scene(tile: str, bands: list[str]) -> dict:
    """The demo catalog's scene of ``tile``, as the search writes it into the manifest."""
    manifest = search_scenes(SearchParams(tiles=[tile]), StacParams(catalog=str(CATALOG)), bands=bands)
    return manifest["scenes"][0]


def _write_band(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32608") -> str:
    return str(write_geotiff(path, data.astype(np.uint16, copy=False), transform=transform, crs=crs, nodata=0))


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
    scene = demo_scene("08WMA", PEEL_BANDS)
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
    scene = demo_scene("08WMA", ["B04"])
    # a 4326 box inside the chip; the output is its bounding box snapped outward to the 10 m grid
    aoi = box(-135.68, 68.045, -135.66, 68.055)
    out = fetch_scene(scene, ["B04"], tmp_path / "cut.tif", FetchParams(clip_to_aoi=True), aoi=aoi)
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
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=1,
        dtype="uint16",
        crs="EPSG:32608",
        transform=Affine(10, 0, 500_000, 0, -10, 7_500_400),
        nodata=0,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    ) as dst:
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
    scene = demo_scene("08WMA", ["B04"])
    out = fetch_scene(scene, ["B04"], tmp_path / "peel.tif", FetchParams(clip_to_aoi=True), aoi=aoi)
    with rasterio.open(out) as ds:
        # the 2.5 km AOI starts 1.9 m inside the chip's first pixel: snapped outward, the whole chip is kept
        assert ds.shape == (251, 251) and ds.transform.c == 470890.0
    with pytest.raises(InputError, match="does not overlap scene S2_08WMA_20210821"):
        fetch_scene(scene, ["B04"], tmp_path / "none.tif", FetchParams(clip_to_aoi=True), aoi=box(10, 50, 11, 51))


# ------------------------------------------------------------------ L2A: harmonisation, SCL mask, skipped scenes


def _l2a_scene(
    tmp_path: Path,
    name: str = "L2A",
    *,
    scl_value: int | None = None,
    b04_value: int | None = None,
    baseline: str = "05.09",
) -> dict:
    """A 40 x 40 px (10 m) L2A-like scene: B04 with the +1000 DN offset, and a 20 m SCL with four classes."""
    t10 = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 7_500_400.0)
    t20 = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 7_500_400.0)
    b04 = np.full((40, 40), 1500, dtype=np.uint16) if b04_value is None else np.full((40, 40), b04_value, np.uint16)
    if b04_value is None:
        b04[0, 0] = 900  # darker than the offset: must stay valid (1), not become nodata
        b04[-1, -1] = 0  # nodata stays nodata
    scl = np.full((20, 20), 4, dtype=np.uint8)  # vegetation
    scl[:10, :10] = 9  # cloud
    scl[10:, :10] = 11  # snow
    scl[:10, 10:] = 6  # water
    if scl_value is not None:
        scl[:] = scl_value
    folder = tmp_path / name
    folder.mkdir()
    with rasterio.open(
        folder / "SCL.tif",
        "w",
        driver="GTiff",
        width=20,
        height=20,
        count=1,
        dtype="uint8",
        crs="EPSG:32608",
        transform=t20,
        nodata=0,
    ) as dst:
        dst.write(scl, 1)
    return {
        "id": f"S2_08WMA_{name}",
        "tile": "08WMA",
        "datetime": "2023-07-01T21:00:00+00:00",
        "crs": "EPSG:32608",
        "processing_baseline": baseline,
        "product_level": "L2A",
        "boa_offset_applied": None,
        "assets": {"B04": _write_band(folder / "B04.tif", b04, t10)},
        "mask_asset": str(folder / "SCL.tif"),
    }


def test_harmonization_offset_rules() -> None:
    assert harmonization_offset({"processing_baseline": "04.00"}, True) == (-1000, "processing baseline 04.00 >= 04.00")
    assert harmonization_offset({"processing_baseline": "03.01"}, True)[0] == 0
    assert harmonization_offset({"processing_baseline": "05.09"}, harmonize=False)[0] == 0
    assert harmonization_offset({"processing_baseline": "05.09", "boa_offset_applied": True}, True)[0] == 0
    assert harmonization_offset({"datetime": "2022-01-25T10:00:00Z"}, True)[0] == -1000
    assert harmonization_offset({"datetime": "2021-08-21T21:00:19+00:00"}, True)[0] == 0
    out = harmonize_dn(np.array([0, 1, 999, 1000, 1001, 65535], dtype=np.uint16), -1000)
    assert out.tolist() == [0, 1, 1, 1, 1, 64535]


def test_l2a_fetch_harmonises_and_writes_quality_mask(tmp_path: Path) -> None:
    scene = _l2a_scene(tmp_path)
    out = fetch_scene(scene, ["B04"], tmp_path / "out" / "scene.tif")
    with rasterio.open(out) as ds:
        assert ds.count == 1 and ds.descriptions == ("B04",) and ds.dtypes[0] == "uint16"
        b04 = ds.read(1)
        grid = (ds.crs, ds.transform, ds.shape)
    assert b04[5, 5] == 500 and b04[0, 0] == 1 and b04[-1, -1] == 0
    mask_path = find_quality_mask(out)
    assert mask_path == tmp_path / "out" / "scene_mask.tif"
    with rasterio.open(mask_path) as ms:
        assert (ms.crs, ms.transform, ms.shape) == grid and ms.dtypes[0] == "uint8"
        mask = ms.read(1)
    assert mask[5, 5] == CLOUD and mask[30, 5] == SNOW and mask[5, 30] == WATER and mask[30, 30] == CLEAR
    assert mask[-1, -1] == INVALID  # no reflectance -> invalid, whatever SCL says
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["offset_applied"] == -1000 and side["harmonized"] and "05.09" in side["offset_reason"]
    assert side["quality_mask"] == "scene_mask.tif" and side["mask_href"] == scene["mask_asset"]
    assert side["skipped"] is False and side["clear_fraction"] == pytest.approx(0.25 - 1 / 1600)
    assert side["quality_fractions"]["cloud"] == pytest.approx(0.25)
    # without harmonisation the DN stay as delivered, and no mask when not asked for
    raw = fetch_scene(scene, ["B04"], tmp_path / "raw" / "scene.tif", FetchParams(harmonize=False, quality_mask=False))
    with rasterio.open(raw) as ds:
        assert ds.read(1)[5, 5] == 1500
    assert find_quality_mask(raw) is None
    assert json.loads(raw.with_suffix(".json").read_text())["quality_mask_note"].startswith("not requested")


@needs_demo
def test_l1c_demo_has_no_mask_and_says_so(tmp_path: Path) -> None:
    scene = demo_scene("08WMA", ["B04"])
    out = fetch_scene(scene, ["B04"], tmp_path / "peel.tif")
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["quality_mask"] is None and side["quality_mask_note"] == "no SCL asset (L1C)"
    assert side["offset_applied"] == 0 and not (tmp_path / "peel_mask.tif").exists()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"scl_value": 9}, "no clear pixel"),
        ({"b04_value": 0}, "no valid pixel"),
    ],
)
def test_all_cloud_or_all_nodata_scene_is_written_but_skipped(
    tmp_path: Path, kwargs: dict, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    scene = _l2a_scene(tmp_path, **kwargs)
    out = fetch_scene(scene, ["B04"], tmp_path / "out" / "scene.tif")
    assert out.exists() and is_skipped(out)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["skipped"] is True and reason in side["skip_reason"]
    assert any("marked skipped" in r.getMessage() for r in caplog.records)


def test_resume_skips_finished_scenes_and_refetches_changed_requests(tmp_path: Path) -> None:
    scene = _l2a_scene(tmp_path)
    out = fetch_scene(scene, ["B04"], tmp_path / "out" / "scene.tif")
    stamp = out.stat().st_mtime_ns
    Path(scene["assets"]["B04"]).unlink()  # a second fetch would fail: it must not read anything
    assert fetch_scene(scene, ["B04"], out, overwrite=False) == out and out.stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="band B04"):  # other settings: fetched again (and the source is gone)
        fetch_scene(scene, ["B04"], out, FetchParams(harmonize=False), overwrite=False)
    manifest = {"provider": {"name": "local"}, "scenes": [scene]}
    with pytest.raises(InputError, match="no scene"):
        fetch_manifest(manifest, ["B04"], tmp_path / "out", scene_ids=["nope"])


def test_median_composite_uses_clear_pixels_only(tmp_path: Path) -> None:
    a = fetch_scene(_l2a_scene(tmp_path, "A", b04_value=1100), ["B04"], tmp_path / "s" / "a.tif")
    b = fetch_scene(_l2a_scene(tmp_path, "B", b04_value=1300, scl_value=4), ["B04"], tmp_path / "s" / "b.tif")
    c = fetch_scene(_l2a_scene(tmp_path, "C", b04_value=1500, scl_value=4), ["B04"], tmp_path / "s" / "c.tif")
    out = composite_scenes([a, b, c], tmp_path / "composite.tif")
    with rasterio.open(out) as ds:
        comp = ds.read(1)
        assert ds.descriptions == ("B04",)
    assert comp[30, 30] == 300  # clear in all three: median of 100, 300, 500
    assert comp[5, 5] == 400  # cloud in A: median of 300 and 500
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["scenes"] == ["a.tif", "b.tif", "c.tif"]


def test_retry_after_header_values() -> None:
    import datetime as dt

    from pixeldino.retry import MAX_RETRY_AFTER_S, retry_after_seconds

    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0  # a date in the past: now
    assert retry_after_seconds("86400") == MAX_RETRY_AFTER_S
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_fetch_params_reject_bad_values() -> None:
    with pytest.raises(ConfigError, match="positive number of metres"):
        FetchParams(resolution=0)
    with pytest.raises(ConfigError, match="fetch.composite 'mean' is not one of none, median"):
        FetchParams(composite="mean")


def test_aoi_cuts_only_with_clip_to_aoi(tmp_path: Path, synthetic_scene: dict) -> None:
    far_away = box(10, 50, 11, 51)  # would fail the cut: it misses the scene
    out = fetch_scene(synthetic_scene, ["B04"], tmp_path / "whole.tif", FetchParams(clip_to_aoi=False), aoi=far_away)
    with rasterio.open(out) as ds:
        assert ds.shape == (40, 40)


def _manifest(tmp_path: Path) -> dict:
    """Two scenes of one tile, both clear (SCL vegetation), with different reflectances."""
    scenes = [
        _l2a_scene(tmp_path, "A", b04_value=1100, scl_value=4),
        _l2a_scene(tmp_path, "B", b04_value=1500, scl_value=4),
    ]
    return {"pixeldino_manifest": 1, "provider": {"name": "local"}, "scenes": scenes}


def test_fetch_manifest_reports_fetched_and_reused_scenes_and_composites(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    out_dir = tmp_path / "scenes"
    first = fetch_manifest(manifest, ["B04"], out_dir, FetchParams(), scene_ids=["S2_08WMA_A"])
    assert first.scenes == first.fetched == [out_dir / "S2_08WMA_A.tif"] and first.reused == []
    assert first.composites == []
    stamp = first.scenes[0].stat().st_mtime_ns
    # the finished scene is reused (same request, per its sidecar); the other is fetched; one composite per tile
    second = fetch_manifest(
        manifest, ["B04"], out_dir, FetchParams(composite="median"), composites_dir=tmp_path / "composites"
    )
    assert second.scenes == [out_dir / "S2_08WMA_A.tif", out_dir / "S2_08WMA_B.tif"]
    assert second.reused == [out_dir / "S2_08WMA_A.tif"] and second.fetched == [out_dir / "S2_08WMA_B.tif"]
    assert second.scenes[0].stat().st_mtime_ns == stamp
    assert second.composites == [tmp_path / "composites" / "08WMA.tif"]
    with rasterio.open(second.composites[0]) as ds:
        assert ds.read(1)[30, 30] == 300  # median of 100 and 500
    # another request (no harmonisation) is not "finished": fetched again; so is everything with overwrite
    third = fetch_manifest(manifest, ["B04"], out_dir, FetchParams(harmonize=False))
    assert third.reused == []
    assert fetch_manifest(manifest, ["B04"], out_dir, FetchParams(harmonize=False), overwrite=True).reused == []
    assert fetch_manifest(manifest, ["B04"], out_dir, FetchParams(harmonize=False)).reused == third.scenes


def test_run_fetch_reads_the_manifest_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = write_manifest(_manifest(tmp_path), tmp_path / "manifest.json")
    report = run_fetch(
        FetchParams(), manifest=path, bands=["B04"], out_dir=tmp_path / "scenes", scene_ids=["S2_08WMA_B"]
    )
    assert report.scenes == [tmp_path / "scenes" / "S2_08WMA_B.tif"] and report.scenes[0].exists()
    assert json.loads(report.scenes[0].with_suffix(".json").read_text())["provider"] == "local"
    with pytest.raises(InputError, match=r"no scene\(s\) \['nope'\] in .*manifest.json; pick ids"):
        run_fetch(FetchParams(), manifest=path, bands=["B04"], out_dir=tmp_path / "scenes", scene_ids=["nope"])


# ------------------------------------------------------------------ reads that cannot lie, finished scenes verified


def _local_stac_item(folder: Path, b04_href: str) -> Path:
    """A one-item static STAC catalog (the item's JSON) of an 08WMA L1C scene whose B04 asset is ``b04_href``."""
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        ],
        "id": "S2_08WMA_JP2",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[-135.0, 69.4], [-134.9, 69.4], [-134.9, 69.45], [-135.0, 69.45], [-135.0, 69.4]]],
        },
        "bbox": [-135.0, 69.4, -134.9, 69.45],
        "properties": {
            "datetime": "2021-08-21T21:00:19Z",
            "platform": "sentinel-2b",
            "eo:cloud_cover": 2.0,
            "proj:code": "EPSG:32608",
            "s2:mgrs_tile": "08WMA",
            "s2:processing_baseline": "03.00",
            "s2:product_type": "S2MSI1C",
        },
        "assets": {
            "red": {
                "href": b04_href,
                "type": "image/jp2",
                "roles": ["data"],
                "eo:bands": [{"name": "B04", "common_name": "red"}],
            }
        },
        "links": [],
    }
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


def _jp2_manifest(tmp_path: Path, *, truncated: bool) -> Path:
    """search -> manifest of the local STAC item whose B04 is a real (tiled, lossless) JPEG2000 file."""
    from test_rasters import band_data, truncate, write_jp2

    jp2 = write_jp2(tmp_path / "B04.jp2", band_data(), Affine(10, 0, 500_000, 0, -10, 7_700_000), "EPSG:32608")
    if truncated:
        truncate(jp2)
    item = _local_stac_item(tmp_path, str(jp2))
    manifest = search_scenes(
        SearchParams(tiles=["08WMA"], datetime="2021-08-01/2021-08-31"), StacParams(catalog=str(item)), bands=["B04"]
    )
    assert [s["assets"]["B04"] for s in manifest["scenes"]] == [str(jp2)]
    return write_manifest(manifest, tmp_path / "manifest.json")


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixeldino", *map(str, args)], capture_output=True, text=True, timeout=300
    )


#: a log record on stderr (the stage's progress log); every other line is what the user is told
LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ \S+: ")


def _told(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not LOG_RECORD.match(line)]


@pytest.mark.skipif(
    "JP2OpenJPEG" not in set(rasterio.drivers.raster_driver_extensions().values()), reason="no JP2OpenJPEG driver"
)
def test_fetch_of_a_truncated_jp2_band_fails_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # before: exit 0, a COG with whole tiles of zeros, and a sidecar saying it is complete
    manifest = _jp2_manifest(tmp_path, truncated=True)
    out_dir = tmp_path / "scenes"
    result = _cli("fetch", "--manifest", manifest, "--bands", "B04", "--out-dir", out_dir)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "ERROR 1:" not in result.stderr  # not even GDAL's own log line
    told = _told(result.stderr)
    assert len(told) == 1 and told[0].startswith("error: "), result.stderr
    assert f"{tmp_path / 'B04.jp2'}: cannot read band B04 of scene S2_08WMA_JP2" in told[0]
    assert "opj_get_decoded_tile() failed" in told[0] and told[0].endswith("truncated: re-download it")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []  # no scene, no sidecar, no temporary


@pytest.mark.skipif(
    "JP2OpenJPEG" not in set(rasterio.drivers.raster_driver_extensions().values()), reason="no JP2OpenJPEG driver"
)
def test_fetch_of_an_intact_jp2_band_is_exact(tmp_path: Path) -> None:
    from test_rasters import band_data

    report = run_fetch(
        FetchParams(), manifest=_jp2_manifest(tmp_path, truncated=False), bands=["B04"], out_dir=tmp_path
    )
    with rasterio.open(report.scenes[0]) as ds:
        assert np.array_equal(ds.read(1), band_data())


def test_completion_record_checksums_what_was_written(tmp_path: Path) -> None:
    import hashlib

    scene = _l2a_scene(tmp_path)
    out = fetch_scene(scene, ["B04"], tmp_path / "out" / "scene.tif")
    record = json.loads(out.with_suffix(".json").read_text())["completed"]
    assert record["request"]["sources"] == {"B04": scene["assets"]["B04"], "SCL": scene["mask_asset"]}
    assert record["request"]["bands"] == ["B04"] and record["request"]["mask_requested"] is True
    for name in ("scene.tif", "scene_mask.tif"):
        path = out.parent / name
        assert record["files"][name] == {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
        }


@pytest.mark.parametrize("damage", ["modify_cog", "truncate_cog", "modify_mask", "old_sidecar", "other_source"])
def test_a_finished_scene_changed_afterwards_is_fetched_again(tmp_path: Path, damage: str) -> None:
    scene = _l2a_scene(tmp_path)
    (out,) = fetch_manifest({"scenes": [scene]}, ["B04"], tmp_path / "out").fetched
    original = out.read_bytes()
    assert fetch_manifest({"scenes": [scene]}, ["B04"], out.parent).reused == [out]  # untouched: trusted
    sidecar = out.with_suffix(".json")
    if damage == "modify_cog":  # same size, one byte of pixel data changed: only the checksum tells
        changed = bytearray(original)
        changed[-10] ^= 0xFF
        out.write_bytes(bytes(changed))
    elif damage == "truncate_cog":
        out.write_bytes(original[: len(original) // 2])
    elif damage == "modify_mask":
        mask = find_quality_mask(out)
        assert mask is not None
        mask.write_bytes(mask.read_bytes()[:-1] + b"\x00")
    elif damage == "old_sidecar":  # written before completion records existed
        meta = json.loads(sidecar.read_text())
        del meta["completed"]
        sidecar.write_text(json.dumps(meta))
    else:  # the manifest now points at another file for the band
        other = tmp_path / "B04_reprocessed.tif"
        other.write_bytes(Path(scene["assets"]["B04"]).read_bytes())
        scene = {**scene, "assets": {"B04": str(other)}}
    report = fetch_manifest({"scenes": [scene]}, ["B04"], out.parent)
    assert report.reused == [] and report.fetched == [out]
    assert out.read_bytes() == original  # the same bytes again, from the source
    assert fetch_manifest({"scenes": [scene]}, ["B04"], out.parent).reused == [out]
