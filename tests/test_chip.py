"""Tests for pixeldino.chip: sampling rules, masks, the zarr layout, ChipParams and ChipStore."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterfiles import write_geotiff
from shapely.geometry import box

from pixeldino.chip import ChipParams, run_chip
from pixeldino.chipstore import ChipStore
from pixeldino.errors import ConfigError, InputError
from pixeldino.labels import IGNORE
from pixeldino.params import field_docs

BANDS = ["B02", "B03", "B04"]
SIZE = 32
X0, Y0 = 400_000.0, 7_600_000.0  # top-left corner of the synthetic scene
TRANSFORM = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
H = W = 128
CRS = "EPSG:32608"


def _xy(row: float, col: float) -> tuple[float, float]:
    return X0 + 10 * col, Y0 - 10 * row


def _box_px(r0: int, c0: int, r1: int, c1: int):
    """A polygon covering pixel rows r0..r1-1 and cols c0..c1-1."""
    x0, y1 = _xy(r0, c0)
    x1, y0 = _xy(r1, c1)
    return box(x0, y0, x1, y1)


@pytest.fixture
def scene_setup(tmp_path: Path) -> dict:
    """A 128 x 128 px 3-band scene with a nodata corner, RTS squares, a footprint and a 32 px hold-out strip."""
    rng = np.random.default_rng(42)
    data = rng.integers(100, 5000, (3, H, W), dtype=np.uint16)
    data[:, 100:, 100:] = 0  # nodata corner
    scene = write_geotiff(
        tmp_path / "scene.tif", data, transform=TRANSFORM, crs=CRS, nodata=0, descriptions=BANDS,
        tiled=True, blockxsize=64, blockysize=64,
    )  # fmt: skip
    rts = [_box_px(10, 10, 20, 20), _box_px(60, 70, 70, 85), _box_px(100, 40, 110, 52), _box_px(40, 5, 50, 25)]
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"id": range(len(rts))}, geometry=rts, crs=CRS).to_file(labels, layer="rts")
    footprint = tmp_path / "footprint.geojson"
    gpd.GeoDataFrame(geometry=[_box_px(0, 0, 120, 128)], crs=CRS).to_file(footprint)  # bottom 8 rows unlabelled
    holdout = tmp_path / "holdout.geojson"
    gpd.GeoDataFrame(geometry=[_box_px(0, 0, 128, 32)], crs=CRS).to_file(holdout)  # left 32 columns
    return {
        "scene": scene,
        "labels": labels,
        "footprint": footprint,
        "holdout": holdout,
        "data": data,
        "out": tmp_path / "chips" / "chips.zarr",
    }


PARAM_NAMES = {"size", "n_labelled", "n_unlabelled", "positive_fraction", "seed"}


def _make(setup: dict, **overrides) -> dict:
    """run_chip on the fixture; ``overrides`` may set ChipParams fields and run_chip arguments alike."""
    params = {"size": SIZE, "n_labelled": 20, "n_unlabelled": 10, "positive_fraction": 0.5, "seed": 7}
    kwargs = dict(
        scenes=[setup["scene"]], bands=BANDS, out=setup["out"], labels=setup["labels"], footprint=setup["footprint"],
        holdout=setup["holdout"], unlabelled_scenes=[setup["scene"]],
    )  # fmt: skip
    for key, value in overrides.items():
        (params if key in PARAM_NAMES else kwargs)[key] = value
    return run_chip(ChipParams(**params), **kwargs)


def test_store_layout_masks_and_splits(scene_setup: dict) -> None:
    stats = _make(scene_setup)
    store = ChipStore(scene_setup["out"])
    assert store.bands == BANDS and store.chip_size == SIZE
    assert stats["counts"]["train"] == 20 and store.n_unlabelled == 10
    # the 32 px hold-out over 120 labelled rows tiles into 4 val chips (the last one flush with row 120)
    assert stats["counts"]["val"] == 4 and store.n_labelled == 24
    assert sorted(p.name for p in scene_setup["out"].parent.iterdir()) == ["chips.zarr", "stats.json"]
    assert json.loads((scene_setup["out"].parent / "stats.json").read_text())["counts"] == stats["counts"]

    images, masks = store.labelled("train")
    assert images.shape == (20, 3, SIZE, SIZE) and images.dtype == np.uint16
    assert masks.shape == (20, SIZE, SIZE) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1, IGNORE}

    data = scene_setup["data"]
    train_entries = [e for e in store.index if e["group"] == "labelled" and e["split"] == "train"]
    for e, img, mask in zip(train_entries, images, masks):
        r, c = e["row"], e["col"]
        assert c >= 32, "a train chip overlaps the hold-out"
        assert np.array_equal(img, data[:, r : r + SIZE, c : c + SIZE])
        rows = np.arange(r, r + SIZE)[:, None] + np.zeros((1, SIZE), int)
        nodata = (img == 0).all(axis=0)
        outside = rows >= 120
        assert (mask[nodata | outside] == IGNORE).all()
        assert not (mask[~(nodata | outside)] == IGNORE).any()
        assert (mask == IGNORE).mean() <= 0.5


def test_val_chips_cover_the_holdout_once(scene_setup: dict) -> None:
    _make(scene_setup)
    store = ChipStore(scene_setup["out"])
    images, masks = store.labelled("val")
    val_entries = [e for e in store.index if e["split"] == "val"]
    assert [(e["row"], e["col"]) for e in val_entries] == [(0, 0), (32, 0), (64, 0), (88, 0)]
    # every labelled hold-out pixel is counted exactly once: 120 rows x 32 cols
    assert int((masks != IGNORE).sum()) == 120 * 32
    # RTS in the hold-out: the 10 x 10 square at (10, 10) and the part of (40..50, 5..25) left of col 32
    assert int((masks == 1).sum()) == 100 + 10 * 20


def test_balance_and_determinism(scene_setup: dict) -> None:
    stats = _make(scene_setup, n_labelled=30, positive_fraction=0.3)
    assert stats["counts"]["train_positive"] == 9
    assert stats["positive_chip_fraction"]["train"] == pytest.approx(0.3)
    index_a = ChipStore(scene_setup["out"]).index
    _make(scene_setup, n_labelled=30, positive_fraction=0.3)
    assert ChipStore(scene_setup["out"]).index == index_a
    _make(scene_setup, n_labelled=30, positive_fraction=0.3, seed=8)
    assert ChipStore(scene_setup["out"]).index != index_a


def test_unlabelled_chips_skip_nodata(scene_setup: dict) -> None:
    _make(scene_setup, n_unlabelled=40)
    store = ChipStore(scene_setup["out"])
    un = store.unlabelled()
    assert un.shape == (40, 3, SIZE, SIZE)
    assert ((un != 0).any(axis=1).mean(axis=(1, 2)) >= 0.5).all()
    entries = [e for e in store.index if e["group"] == "unlabelled"]
    for e, img in zip(entries, un):
        assert np.array_equal(img, scene_setup["data"][:, e["row"] : e["row"] + SIZE, e["col"] : e["col"] + SIZE])
    np.testing.assert_array_equal(store.read_unlabelled([3, 1]), un[[3, 1]])


def test_band_mismatch_names_scene_and_band(scene_setup: dict) -> None:
    with pytest.raises(InputError, match=r"scene\.tif: lacks band\(s\) B08 \(it has B02, B03, B04\); fetch the scene"):
        _make(scene_setup, bands=["B02", "B08"])
    assert not scene_setup["out"].exists()


def test_scene_in_another_utm_zone_is_not_labelled(scene_setup: dict, tmp_path: Path) -> None:
    far = write_geotiff(
        tmp_path / "far_scene.tif", np.full((3, 64, 64), 500, dtype=np.uint16), crs="EPSG:32652",
        transform=Affine(10.0, 0.0, 510_000.0, 0.0, -10.0, 7_976_000.0), nodata=0, descriptions=BANDS,
    )  # fmt: skip
    stats = _make(scene_setup, scenes=[scene_setup["scene"], far], unlabelled_scenes=[far])
    assert stats["scenes"]["labelled"] == [str(scene_setup["scene"])]
    store = ChipStore(scene_setup["out"])
    assert {e["scene"] for e in store.index if e["group"] == "labelled"} == {"scene.tif"}
    assert {e["scene"] for e in store.index if e["group"] == "unlabelled"} == {"far_scene.tif"}
    assert (store.unlabelled() == 500).all()


def test_store_errors(tmp_path: Path, scene_setup: dict) -> None:
    with pytest.raises(InputError, match="not found"):
        ChipStore(tmp_path / "nothing.zarr")
    # a store that lost its chips (written by hand here: run_chip refuses to write an empty one)
    _make(scene_setup, labels=None, footprint=None, holdout=None, n_unlabelled=4)
    zarr.open_group(str(scene_setup["out"]), mode="r+")["unlabelled/image"].resize((0, 3, SIZE, SIZE))
    with pytest.raises(InputError, match="holds no chips"):
        ChipStore(scene_setup["out"])
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs=CRS).to_file(far)
    with pytest.raises(InputError, match=r"none of the 1 scenes \(scene\.tif\) overlaps the label footprint"):
        _make(scene_setup, footprint=far)


def _write_mask(scene: Path, mask: np.ndarray) -> Path:
    return write_geotiff(scene.with_name(scene.stem + "_mask.tif"), mask.astype(np.uint8), transform=TRANSFORM, crs=CRS)


def test_quality_mask_ignores_flagged_pixels_and_skips_bad_unlabelled_windows(scene_setup: dict) -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[:, 64:] = 2  # the right half is cloud
    _write_mask(scene_setup["scene"], mask)
    stats = _make(scene_setup, n_unlabelled=20)
    store = ChipStore(scene_setup["out"])
    for e in store.index:
        if e["group"] == "labelled":
            _, m = store.read_labelled([e["i"]])
            cols = np.arange(e["col"], e["col"] + SIZE)
            assert (m[0][:, cols >= 64] == IGNORE).all()
    for e in (e for e in store.index if e["group"] == "unlabelled"):
        assert e["col"] + SIZE / 2 <= 64, "an unlabelled chip that is mostly cloud was kept"
    assert stats["counts"]["skipped_quality"] > 0


def test_mask_on_another_grid_is_an_error(scene_setup: dict) -> None:
    path = scene_setup["scene"].with_name("scene_mask.tif")
    write_geotiff(path, np.zeros((H // 2, W // 2), np.uint8), transform=Affine(20.0, 0.0, X0, 0.0, -20.0, Y0), crs=CRS)
    with pytest.raises(InputError, match=r"quality mask grid \(.*64x64 px.*\) is not on the grid of .*scene\.tif"):
        _make(scene_setup)


def test_skipped_scene_is_left_out(scene_setup: dict, tmp_path: Path) -> None:
    far = tmp_path / "cloudy.tif"
    write_geotiff(far, np.full((3, 64, 64), 700, np.uint16), transform=TRANSFORM, crs=CRS, nodata=0, descriptions=BANDS)
    far.with_suffix(".json").write_text(json.dumps({"skipped": True, "quality_mask": None}))
    stats = _make(scene_setup, unlabelled_scenes=[scene_setup["scene"], far])
    assert stats["scenes"]["unlabelled"] == [str(scene_setup["scene"])]


def test_chip_params_defaults_bounds_and_docs() -> None:
    params = ChipParams()
    assert (params.size, params.n_labelled, params.n_unlabelled, params.positive_fraction, params.seed) == (
        64,
        96,
        96,
        0.5,
        0,
    )
    with pytest.raises(ConfigError, match="chips.size must be a multiple of 16, got 40"):
        ChipParams(size=40)
    with pytest.raises(ConfigError, match="chips.size must be at least 16, got 0"):
        ChipParams(size=0)
    with pytest.raises(ConfigError, match="chips.positive_fraction must be at most 1, got 1.5"):
        ChipParams(positive_fraction=1.5)
    with pytest.raises(ConfigError, match="chips.n_unlabelled must be at least 0, got -1"):
        ChipParams(n_unlabelled=-1)
    # every field is documented in the Attributes section the CLI help and the config schema are derived from
    assert set(field_docs(ChipParams)) == set(ChipParams.__dataclass_fields__)


def test_stats_go_where_asked(scene_setup: dict, tmp_path: Path) -> None:
    stats = _make(scene_setup, stats_out=tmp_path / "elsewhere" / "chip_stats.json")
    assert json.loads((tmp_path / "elsewhere" / "chip_stats.json").read_text())["counts"] == stats["counts"]
    assert not (scene_setup["out"].parent / "stats.json").exists()


def test_summary_line_and_the_warning_without_hold_out(scene_setup: dict, caplog) -> None:
    with caplog.at_level("INFO", logger="pixeldino.chip"):
        stats = _make(scene_setup)
    expected = (
        "chip: 24 labelled chips (20 train, 50% with RTS; 4 val, 50% with RTS) and 10 unlabelled chips in "
        f"{scene_setup['out']}"
    )
    assert stats["summary"] == expected and expected in caplog.text
    assert "no hold-out" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pixeldino.chip"):
        stats = _make(scene_setup, holdout=None)
    assert stats["counts"]["val"] == 0 and stats["summary"].startswith("chip: 20 labelled chips (20 train")
    assert "4 val" not in stats["summary"] and "0 val, none" in stats["summary"]
    assert "no hold-out (labels.holdout, --holdout): no validation chips" in caplog.text


def _vector(path: Path, geoms: list) -> Path:
    import pyogrio

    gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(geoms, crs=CRS), crs=CRS)
    pyogrio.write_dataframe(gdf, path, geometry_type=None if geoms else "Polygon")
    return path


def _refused(setup: dict, error: type[Exception], match: str, **overrides) -> None:
    with pytest.raises(error, match=match) as err:
        _make(setup, **overrides)
    assert "\n" not in str(err.value)
    out = setup["out"]
    assert not out.exists() and not (out.parent / "stats.json").exists()
    assert not list(out.parent.glob(".*")) if out.parent.exists() else True  # no temporary left


def test_labels_that_give_no_usable_chips_are_refused(scene_setup: dict, tmp_path: Path) -> None:
    far = _vector(tmp_path / "far.gpkg", [box(X0 + 50_000, Y0 - 500, X0 + 50_100, Y0 - 400)])
    _refused(
        scene_setup,
        InputError,
        r"the 1 polygons of .*far\.gpkg overlap none of the scenes \(scene\.tif\) inside the footprint .*footprint"
        r"\.geojson with a single RTS pixel; fetch the scenes that cover the labels",
        labels=far,
    )
    empty = _vector(tmp_path / "empty.gpkg", [])
    _refused(scene_setup, InputError, r"label file .*empty\.gpkg has no polygons \(it has no features\)", labels=empty)
    _refused(
        scene_setup,
        InputError,
        r"the hold-out .*far\.gpkg does not overlap the labelled part of the scenes \(scene\.tif\)",
        holdout=far,
    )
    # a hold-out over every slump leaves train chips without RTS
    every = _vector(tmp_path / "every.gpkg", [_box_px(0, 0, 128, 90)])
    _refused(
        scene_setup,
        InputError,
        r"no 32 px training window holds RTS: every label polygon of .*labels\.gpkg in the labelled area lies in "
        r"the hold-out .*every\.gpkg",
        holdout=every,
    )


def test_all_nodata_scenes_are_refused(scene_setup: dict, tmp_path: Path) -> None:
    blank = tmp_path / "blank.tif"
    with rasterio.open(scene_setup["scene"]) as src:
        profile = src.profile
    with rasterio.open(blank, "w", **profile) as dst:
        dst.write(np.zeros((3, H, W), np.uint16))
        dst.descriptions = tuple(BANDS)
    _refused(
        scene_setup,
        InputError,
        r"no training chip could be cut: all 32 px windows of the labelled area of blank\.tif are mostly nodata",
        scenes=[blank],
    )
    _refused(scene_setup, InputError, r"unlabelled scenes \(blank\.tif\) are mostly nodata", unlabelled_scenes=[blank])


def test_requests_that_make_no_sense_are_refused(scene_setup: dict) -> None:
    _refused(
        scene_setup,
        ConfigError,
        r"labels.holdout \(--holdout\) .*holdout\.geojson given without labels",
        labels=None,
        footprint=None,
    )
    _refused(
        scene_setup,
        ConfigError,
        r"nothing to chip: no labelled chips .*\(chips.n_unlabelled / --n-unlabelled is 0, 1 unlabelled scenes\)",
        labels=None,
        footprint=None,
        holdout=None,
        n_unlabelled=0,
    )


def test_train_chips_without_rts_are_refused_up_front(scene_setup: dict) -> None:
    _refused(scene_setup, ConfigError, r"chips.positive_fraction \(--positive-fraction\) is 0", positive_fraction=0.0)
    _refused(
        scene_setup,
        ConfigError,
        r"chips.positive_fraction 0.01 of 20 training chips \(chips.n_labelled\) rounds to no chip with RTS",
        positive_fraction=0.01,
    )


def test_labels_are_not_read_when_no_labelled_chip_is_asked_for(scene_setup: dict, tmp_path: Path) -> None:
    empty = _vector(tmp_path / "empty.gpkg", [])  # would be refused if it were read
    stats = _make(scene_setup, labels=empty, holdout=None, n_labelled=0)
    assert stats["counts"]["train"] == stats["counts"]["val"] == 0 and stats["counts"]["unlabelled"] == 10
