"""Change between years on synthetic multi-year scenes: co-registration, per-year maps, tracks, growth, status."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine
from rasterfiles import write_geotiff, write_probability_raster
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Point, box

from pixeldino.change import ChangeParams, run_change, track_slumps
from pixeldino.coregister import coregister_tile, phase_shift, scene_corrections
from pixeldino.errors import InputError
from pixeldino.io import TILED_GTIFF_PROFILE
from pixeldino.merge import MergeParams
from pixeldino.polygonize import PolygonizeParams, run_polygonize

X0, Y0, RES, SIZE = 600_000.0, 7_650_000.0, 10.0, 400
GRID = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
YEARS = (2019, 2021, 2023)
#: content offset of each year against 2019 (dx east, dy south, pixels): what co-registration must find
SHIFTS = {2019: (0.0, 0.0), 2021: (1.3, -0.6), 2023: (-0.7, 0.9)}
GROWTH = 3000.0  # m2 per year of the growing slump


def _circle(cx: float, cy: float, area: float):
    return Point(cx, cy).buffer(np.sqrt(area / np.pi), 128)


def slumps(year: int) -> dict[str, object]:
    """The true slumps of a year in map coordinates (before misregistration)."""
    t = year - YEARS[0]
    cx, cy = X0 + 2000, Y0 - 2000
    out = {
        "growing": _circle(cx - 1000, cy + 1000, 20_000 + GROWTH * t),
        "stable": _circle(cx + 1000, cy + 1000, 15_000),
        "shrinking": _circle(cx - 1000, cy - 1000, 30_000 - 2000 * t),
    }
    if year >= 2021:
        out["new"] = _circle(cx + 1100, cy - 1100, 12_000)
    if year == 2019:
        out["vanishing"] = _circle(cx, cy, 10_000)
    if year < 2023:
        out["splitting"] = box(cx - 150, cy + 1300, cx + 150, cy + 1400)
    else:  # two pieces with a 40 m gap, both inside the earlier outline
        out["split_a"] = box(cx - 150, cy + 1300, cx - 20, cy + 1400)
        out["split_b"] = box(cx + 20, cy + 1300, cx + 150, cy + 1400)
    return out


def _texture(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 2.0)
    return 3000 + 8000 * field


def write_year(tmp: Path, year: int) -> tuple[Path, Path]:
    """Scene COG (band B08 with a texture moved by the year's shift), sidecar, and the prediction of its slumps."""
    dx, dy = SHIFTS[year]
    scene_id = f"S2A_{year}0715_T08WMA"
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(_texture()), (dy, dx))).real
    # slow radiometric change between summers: phase correlation must not care
    moved = moved * (1 + 0.05 * (year - 2019)) + 40 * np.random.default_rng(year).normal(size=moved.shape)
    blocks = {"blockxsize": 256, "blockysize": 256}
    scene = write_geotiff(
        tmp / f"{scene_id}.tif", np.clip(moved, 1, 65535).astype(np.uint16), transform=GRID, nodata=0,
        descriptions=["B08"], **{**TILED_GTIFF_PROFILE, **blocks},
    )  # fmt: skip
    when = f"{year}-07-15T20:00:00Z"
    scene.with_suffix(".json").write_text(
        json.dumps(
            {"scene_id": scene_id, "tile": "08WMA", "datetime": when, "quality_mask": None, "clear_fraction": 1.0}
        )
    )
    # the detections sit where the misregistered image shows them
    geoms = [affinity.translate(g, dx * RES, -dy * RES) for g in slumps(year).values()]
    dn = rasterize([(g, 230) for g in geoms], out_shape=(SIZE, SIZE), transform=GRID, fill=0, dtype="uint8")
    tags = {"SCENE_ID": scene_id, "TILE": "08WMA", "DATETIME": when, "THRESHOLD": "0.5", "MODEL": "synthetic"}
    prob = write_probability_raster(tmp / f"{scene_id}_prob.tif", dn, transform=GRID, tags=tags, **blocks)
    polygons = tmp / f"{scene_id}.gpkg"
    run_polygonize(PolygonizeParams(min_area_m2=0), prob, polygons)
    return scene, polygons


@pytest.fixture(scope="module")
def multi_year(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("years")
    scenes, polygons = zip(*(write_year(tmp, y) for y in YEARS))
    coreg = coregister_tile(list(scenes), tmp / "coregistration" / "08WMA.json")
    out = tmp / "rts_change.gpkg"
    tracks = run_change(
        ChangeParams(),
        MergeParams(),
        list(polygons),
        out,
        years=list(YEARS),
        coregistration=[tmp / "coregistration" / "08WMA.json"],
        out_tracks_parquet=tmp / "tracks.parquet",
        out_years_parquet=tmp / "years.parquet",
        out_change_png=tmp / "change.png",
        out_growth_png=tmp / "growth.png",
    )
    return {"tmp": tmp, "scenes": scenes, "polygons": polygons, "coreg": coreg, "out": out, "tracks": tracks}


def _track_at(tracks: gpd.GeoDataFrame, name: str, year: int = 2023) -> gpd.GeoSeries:
    where = gpd.GeoSeries([slumps(year)[name].representative_point()], crs=32608).to_crs(tracks.crs).iloc[0]
    hit = tracks[tracks.geometry.intersects(where)]
    assert len(hit) == 1, (name, len(hit))
    return hit.iloc[0]


def test_known_shift_between_years_is_measured_within_a_fifth_of_a_pixel(multi_year) -> None:
    coreg = multi_year["coreg"]
    assert coreg["reference"] == "S2A_20190715_T08WMA"
    for year in YEARS:
        entry = coreg["scenes"][f"S2A_{year}0715_T08WMA"]
        dx, dy = SHIFTS[year]
        assert entry["year"] == year
        assert abs(entry["dx_px"] - dx) < 0.2 and abs(entry["dy_px"] - dy) < 0.2, (year, entry)
        assert entry["correction_m"] == pytest.approx([-entry["dx_px"] * RES, entry["dy_px"] * RES], abs=1e-3)
    saved = json.loads((multi_year["tmp"] / "coregistration" / "08WMA.json").read_text())
    assert saved["scenes"].keys() == coreg["scenes"].keys() and saved["band"] == "B08"


def test_shift_is_removed_before_tracking(multi_year) -> None:
    """After correction the stable slump's outlines of 2019 and 2021 coincide; uncorrected they do not."""
    import pyproj

    layers = {y: gpd.read_file(multi_year["out"], layer=f"rts_{y}") for y in YEARS}
    to_map = pyproj.Transformer.from_crs(32608, 3413, always_xy=True).transform
    from shapely.ops import transform

    truth = transform(to_map, slumps(2019)["stable"])
    for year in YEARS:
        hit = layers[year][layers[year].intersects(truth)]
        assert len(hit) == 1
        geom = hit.geometry.iloc[0]
        iou = geom.intersection(truth).area / geom.union(truth).area
        assert iou > 0.9, (year, iou)  # 2019 itself: 0.93 (rasterisation and simplification)
    raw = {y: gpd.read_file(p, layer="rts").to_crs(3413) for y, p in zip(YEARS, multi_year["polygons"])}
    raw_hit = raw[2021][raw[2021].intersects(truth)].geometry.iloc[0]
    assert raw_hit.intersection(truth).area / raw_hit.union(truth).area < 0.8  # the 14 m shift, uncorrected


def test_change_table_recovers_growth_and_every_status(multi_year) -> None:
    tracks = multi_year["tracks"]
    growing = _track_at(tracks, "growing")
    assert growing.status == "growing"
    assert growing.growth_m2_per_yr == pytest.approx(GROWTH, rel=0.10)
    assert (growing.first_year, growing.last_year, growing.n_years) == (2019, 2023, 3)
    for year in YEARS:
        assert growing[f"area_{year}_m2"] == pytest.approx(20_000 + GROWTH * (year - 2019), rel=0.05)
    shrinking = _track_at(tracks, "shrinking")
    assert shrinking.status == "shrinking"
    assert shrinking.growth_m2_per_yr == pytest.approx(-2000, rel=0.10)
    stable = _track_at(tracks, "stable")
    assert stable.status == "stable" and abs(stable.growth_m2_per_yr) < 0.1 * 15_000 / 4
    new = _track_at(tracks, "new")
    assert new.status == "new" and new.first_year == 2021 and np.isnan(new["area_2019_m2"])
    gone = tracks[tracks.last_year == 2019]
    assert len(gone) == 1 and gone.iloc[0].status == "not seen"
    split = _track_at(tracks, "split_a")
    assert split.track_id == _track_at(tracks, "split_b").track_id  # one track, recorded as a split
    assert split.events == "split 2021-2023" and split.n_polygons == 4
    assert len(tracks) == 6
    assert set(tracks.status) == {"new", "growing", "stable", "shrinking", "not seen"}


def test_outputs_layers_ids_and_parquet(multi_year) -> None:
    out = multi_year["out"]
    layers = {name for name, _ in pyogrio.list_layers(out)}
    assert {"rts_2019", "rts_2021", "rts_2023", "rts_tracks", "rts_track_links"} <= layers
    tracks = gpd.read_file(out, layer="rts_tracks")
    assert tracks.crs.to_epsg() == 3413 and tracks.track_id.is_unique
    assert all(t.startswith("TRK_") for t in tracks.track_id)
    y2023 = gpd.read_file(out, layer="rts_2023")
    assert set(y2023.track_id) <= set(tracks.track_id) and len(y2023) == 6
    links = pyogrio.read_dataframe(out, layer="rts_track_links")
    assert {"from_rts_id", "to_rts_id", "overlap_share", "iou", "track_id"} <= set(links.columns)
    assert (links.overlap_share >= 0.5).all()
    parquet = gpd.read_parquet(multi_year["tmp"] / "tracks.parquet")
    assert list(parquet.track_id) == list(tracks.track_id)
    years = gpd.read_parquet(multi_year["tmp"] / "years.parquet")
    assert sorted(years.year.unique()) == list(YEARS)
    for png in ("change.png", "growth.png"):
        assert (multi_year["tmp"] / png).stat().st_size > 5000


def test_track_ids_are_stable_when_a_later_year_is_added(multi_year) -> None:
    full = multi_year["tracks"]
    two = run_change(
        ChangeParams(),
        MergeParams(),
        list(multi_year["polygons"][:2]),
        multi_year["tmp"] / "two.gpkg",
        years=[2019, 2021],
        coregistration=[multi_year["tmp"] / "coregistration" / "08WMA.json"],
    )
    assert set(two.track_id) <= set(full.track_id)


def test_shift_above_the_limit_is_refused(multi_year) -> None:
    with pytest.raises(InputError, match=r"shifted by 1\.\d+ px .*change.max_shift_px"):
        scene_corrections([multi_year["tmp"] / "coregistration" / "08WMA.json"], max_shift_px=1.0)


def test_phase_shift_recovers_subpixel_offsets() -> None:
    base = _texture(7)[:256, :256]
    for dy, dx in ((0.37, -1.62), (-0.8, 0.45), (1.25, 0.1)):
        moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(base), (dy, dx))).real
        got_dy, got_dx, peak = phase_shift(base, moved)
        assert abs(got_dy - dy) < 0.1 and abs(got_dx - dx) < 0.1 and peak > 0.3


def test_tracking_links_a_slump_missed_for_one_year() -> None:
    crs = "EPSG:3413"

    def layer(geoms: list) -> gpd.GeoDataFrame:
        return gpd.GeoDataFrame(
            {"rts_id": [f"R{k}" for k in range(len(geoms))], "area_m2": [g.area for g in geoms]},
            geometry=geoms,
            crs=crs,
        )

    a = box(0, 0, 100, 100)
    tracks, years, links = track_slumps({2019: layer([a]), 2021: layer([]), 2023: layer([box(0, 0, 100, 130)])})
    assert len(tracks) == 1
    t = tracks.iloc[0]
    assert (t.first_year, t.last_year, t.n_years, t.status) == (2019, 2023, 2, "growing")
    assert t.growth_m2_per_yr == pytest.approx(3000 / 4)
    assert len(links) == 1 and links.iloc[0].from_year == 2019 and links.iloc[0].to_year == 2023


def test_one_year_only_is_refused(multi_year, tmp_path) -> None:
    polygons = list(multi_year["polygons"])
    out = tmp_path / "c.gpkg"
    with pytest.raises(InputError, match=r"change needs at least two years but 2 polygon file\(s\) .* give only 2019"):
        run_change(ChangeParams(), MergeParams(), [polygons[0], polygons[0]], out)
    with pytest.raises(InputError, match=r"the years asked for \(--years, search.years\) give only 2021"):
        run_change(ChangeParams(), MergeParams(), polygons, out, years=[2021])
    assert not out.exists()


def test_broken_coregistration_records_are_refused(multi_year, tmp_path) -> None:
    with pytest.raises(
        InputError, match=r"nowhere\.json: co-registration sidecar not found; run `pixeldino coregister`"
    ):
        scene_corrections([tmp_path / "nowhere.json"])
    record = json.loads((multi_year["tmp"] / "coregistration" / "08WMA.json").read_text())
    scene = next(iter(record["scenes"]))
    del record["scenes"][scene]["correction_m"]
    (tmp_path / "cut.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=rf"cut\.json: scene {scene} lacks its shift \(dx_px, dy_px, correction_m\)"):
        scene_corrections([tmp_path / "cut.json"])
    (tmp_path / "other.json").write_text(json.dumps({"type": "FeatureCollection"}))
    with pytest.raises(InputError, match=r"other\.json: not a co-registration record \(no 'scenes'\)"):
        scene_corrections([tmp_path / "other.json"])


def test_every_scene_must_carry_the_coregistration_band(multi_year, tmp_path) -> None:
    with pytest.raises(InputError, match=r"T08WMA\.tif: lacks band\(s\) B11 \(it has B08\); choose another"):
        coregister_tile(list(multi_year["scenes"])[:1], tmp_path / "c.json", band="B11")
    assert not (tmp_path / "c.json").exists()
