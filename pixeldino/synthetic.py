"""Synthetic Arctic scenes with real RTS outlines: a benchmark with a real, controllable domain shift.

Each scene is a procedurally generated tundra landscape, stored like a Sentinel-2 L1C chip (7 bands B02-B08,
top-of-atmosphere reflectance x 10000 as uint16, nodata 0, 10 m pixels), into which REAL retrogressive thaw slump
outlines from the shipped inventories (``resources/rts_labels``, see its README) are pasted:

* outlines are reprojected to a local metric CRS (the region's UTM zone), centred, randomly rotated and placed,
  keeping their real size, then rasterised at 10 m by pixel centre (the project's label convention), so the
  mask of a slump has the pixels its real outline covers; the outline pool of a region is that region's own
  inventory (Nitze et al. 2021 regions, plus Huang et al. 2022 for Banks Island);
* slumps look like slumps: bare, brighter and greyer soil than the tundra, a shaded (or sunlit) headwall band on
  the upslope rim, mud-flow streaks along the downslope direction and fine internal texture, blended into the
  surroundings over about a pixel;
* each region has its own look (:class:`pixeldino.synthetic_regions.RegionStyle`: vegetation, texture, relief,
  illumination, lakes, snow, hard negatives, slump appearance); the two held-out regions (Herschel, Lena; as in
  the PixelDINO paper) differ from the four labelled ones, so a model trained on the labelled regions meets a
  genuine domain shift there.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``(seed, region)``: the same call gives the same
scene, bit for bit. Every scene also has a DEM (``SyntheticScene.dem``, written by :func:`write_dem`), made by
:mod:`pixeldino.synthetic_terrain` from a random stream of its own, so the images are exactly what they were
before the DEM existed.
"""

from __future__ import annotations

import functools
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity

from pixeldino.labels import clean_polygons
from pixeldino.synthetic_regions import REGIONS, RegionStyle
from pixeldino.synthetic_terrain import scene_terrain

#: Band order of synthetic scenes (the bands the two real demo chips share).
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08")
PIXEL_SIZE = 10.0
#: Synthetic scenes are placed in UTM 8N (Peel Plateau); only the metric grid matters.
CRS = "EPSG:32608"
ORIGIN = (500_000.0, 7_600_000.0)
DEFAULT_LABELS_DIR = Path(__file__).resolve().parent.parent / "resources" / "rts_labels"

# Typical top-of-atmosphere reflectance x 10000 in B02, B03, B04, B05, B06, B07, B08.
_DRY_TUNDRA = np.array([720, 680, 600, 1050, 1900, 2250, 2450], dtype=np.float64)
_WET_TUNDRA = np.array([650, 620, 470, 900, 2200, 2650, 2850], dtype=np.float64)
_WATER = np.array([700, 560, 360, 300, 240, 220, 190], dtype=np.float64)
_SNOW = np.array([7800, 7600, 7400, 7200, 6900, 6700, 6500], dtype=np.float64)
_BARE = np.array([1050, 1150, 1250, 1450, 1700, 1800, 1900], dtype=np.float64)


@dataclass
class PastedSlump:
    """One real outline pasted into a scene.

    Attributes:
        source: ``(inventory file, row)`` of the real outline.
        polygon: the placed (rotated, translated) outline in the scene CRS.
        n_pixels: pixels whose centre lies inside ``polygon`` (by itself, before other slumps are added).
        area_m2: area of the real outline (rotation and translation keep it).
        downslope_deg: the direction the slump opens to (its headwall is on the opposite rim), degrees
            counter-clockwise from east.
        in_dem: carved into the scene's DEM (see ``RegionStyle.dem_slump_share``).
    """

    source: tuple[str, int]
    polygon: shapely.Geometry
    n_pixels: int
    area_m2: float
    downslope_deg: float = 0.0
    in_dem: bool = True


@dataclass
class SyntheticScene:
    """A generated scene: ``image`` (C, H, W) uint16 DN, ``mask`` (H, W) uint8 (1 = RTS, 0 = background).

    ``dem`` is its elevation model as a DEM product shows it (float32 metres at ``dem_transform``, 30 m pixels
    covering the scene), ``elevation`` the terrain it was made from, on the scene's 10 m grid.
    """

    region: str
    seed: int
    image: np.ndarray
    mask: np.ndarray
    transform: Affine
    crs: str = CRS
    bands: tuple[str, ...] = BANDS
    slumps: list[PastedSlump] = field(default_factory=list)
    dem: np.ndarray | None = None
    dem_transform: Affine | None = None
    elevation: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------------------
# real outlines
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outline:
    """A real RTS outline centred on the origin, in metres."""

    source: tuple[str, int]
    geometry: shapely.Geometry

    @property
    def area(self) -> float:
        """Area of the outline, m²."""
        return float(self.geometry.area)


def _centred_metric(gdf: gpd.GeoDataFrame, file: str) -> list[Outline]:
    """Outlines of one inventory subset, in its local UTM zone, each moved so that its centroid is the origin."""
    if gdf.crs.is_geographic:
        gdf = gdf.to_crs(gdf.estimate_utm_crs())
    out = []
    for row, geom in zip(gdf.index, gdf.geometry):
        c = geom.centroid
        out.append(Outline((file, int(row)), affinity.translate(geom, -c.x, -c.y)))
    return out


@functools.lru_cache(maxsize=4)
def _outlines_cached(labels_dir: str) -> dict[str, tuple[Outline, ...]]:
    """The outline pools of :func:`load_outlines`, read once per labels folder."""
    base = Path(labels_dir)
    pools: dict[str, list[Outline]] = {}
    nitze_file = "nitze2021_rts_training_labels.gpkg"
    nitze = gpd.read_file(base / nitze_file, layer="rts")
    nitze.index = range(len(nitze))
    nitze = _clean_keep_index(nitze)
    for region, sub in nitze.groupby("region", sort=True):
        pools.setdefault(str(region), []).extend(_centred_metric(sub, nitze_file))
    for file, region in (
        ("huang2022_banks_island.gpkg", "Banks_Island"),
        ("huang2022_hot_weather_creek.gpkg", "Hot_Weather_Creek"),
        ("huang2022_willow_river.gpkg", "Willow_River"),
    ):
        gdf = gpd.read_file(base / file, layer="rts")
        gdf.index = range(len(gdf))
        pools.setdefault(region, []).extend(_centred_metric(_clean_keep_index(gdf), file))
    return {k: tuple(v) for k, v in pools.items()}


def _clean_keep_index(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """:func:`pixeldino.labels.clean_polygons` (repairs the 4 invalid Nitze outlines), keeping the row numbers."""
    gdf = gdf.assign(_row=np.arange(len(gdf)))
    cleaned = clean_polygons(gdf)
    cleaned.index = cleaned["_row"].to_numpy()
    return cleaned.drop(columns="_row")


def load_outlines(labels_dir: str | os.PathLike[str] | None = None) -> dict[str, tuple[Outline, ...]]:
    """Real RTS outlines by region (``Banks_Island``, ``Herschel``, ...), centred, in metres (cached)."""
    return _outlines_cached(str(Path(labels_dir) if labels_dir else DEFAULT_LABELS_DIR))


# --------------------------------------------------------------------------------------------------------------
# scene generation
# --------------------------------------------------------------------------------------------------------------


def _region_rng(region: str, seed: int, stream: int = 0) -> np.random.Generator:
    """The random stream of ``(region, seed)``; stream 0 makes the image, stream 1 the terrain."""
    key = [int(seed), zlib.crc32(region.encode())]
    return np.random.default_rng(key if stream == 0 else [*key, int(stream)])


def _field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-9)


def _threshold_share(f: np.ndarray, share: float) -> np.ndarray:
    """Pixels of the top ``share`` of a field (empty for share 0)."""
    if share <= 0:
        return np.zeros(f.shape, dtype=bool)
    return f > np.quantile(f, 1.0 - share)


def _hillshade(z: np.ndarray, azimuth_deg: float, altitude_deg: float = 25.0) -> np.ndarray:
    """Lambertian shading of a height field (same units as the pixel), ~1 on flat ground."""
    gy, gx = np.gradient(z)
    az, alt = np.radians(azimuth_deg), np.radians(altitude_deg)
    sun = np.array([np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt)])  # east, north, up
    normal = np.stack([-gx, gy, np.ones_like(z)])  # rows grow southwards, hence +gy for north
    normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    return np.tensordot(sun, normal, axes=1) / np.sin(alt)


def _background(rng: np.random.Generator, style: RegionStyle, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tundra reflectance (C, H, W) before illumination: dry/wet mosaic with texture, lakes, snow, bare patches."""
    veg = np.asarray(style.veg_tint)
    wet_field = _field(rng, shape, style.texture_sigma * 3)
    wet = 1.0 / (1.0 + np.exp(-(wet_field + 3.0 * (style.wet_share - 0.5)) / 0.6))
    fine = _field(rng, shape, style.texture_sigma / 3) * 0.6 + _field(rng, shape, style.texture_sigma) * 0.4
    # below peak season tundra is redder and its red-edge/NIR rise weaker
    phen = 1.0 + (1.0 - style.phenology) * np.array([0.05, 0.0, 0.4, 0.0, -0.2, -0.3, -0.3])
    veg = veg * phen
    land = (_DRY_TUNDRA * veg)[:, None, None] * (1 - wet) + (_WET_TUNDRA * veg)[:, None, None] * wet
    land = land * (1.0 + style.texture_amp * fine)[None]
    lakes = _threshold_share(_field(rng, shape, style.lake_sigma), style.lake_fraction)
    snow = _threshold_share(_field(rng, shape, 4.0) + 0.5 * _field(rng, shape, 1.5), style.snow_fraction)
    bare = _threshold_share(_field(rng, shape, 2.0) + 0.3 * _field(rng, shape, 0.8), style.bare_fraction)
    img = land
    bare_spec = (_BARE * np.asarray(style.rts_tint))[:, None, None] * (1.0 + 0.1 * fine)[None]
    img = np.where(bare[None], bare_spec, img)
    img = np.where(snow[None], _SNOW[:, None, None] * (1.0 + 0.03 * fine)[None], img)
    lake_spec = (_WATER * np.asarray(style.water_tint))[:, None, None] * (1.0 + 0.05 * _field(rng, shape, 3.0))[None]
    img = np.where(lakes[None], lake_spec, img)
    return img, lakes


def _paste_slump(
    img: np.ndarray, mask_one: np.ndarray, rng: np.random.Generator, style: RegionStyle, background: np.ndarray
) -> float:
    """Give the pixels of one slump (``mask_one``) a slump's look, in place; returns its downslope direction
    (radians counter-clockwise from east: ``PastedSlump.downslope_deg``, which the terrain carves along)."""
    rows, cols = np.nonzero(mask_one)
    r0, r1 = max(rows.min() - 3, 0), min(rows.max() + 4, img.shape[1])
    c0, c1 = max(cols.min() - 3, 0), min(cols.max() + 4, img.shape[2])
    m = mask_one[r0:r1, c0:c1]
    h, w = m.shape
    depth = ndimage.distance_transform_edt(m)
    # downslope direction: slumps open towards a lake or valley; the headwall is the upslope rim
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rows.mean() - r0, cols.mean() - c0
    along = (xx - cx) * np.cos(theta) - (yy - cy) * np.sin(theta)  # positive downslope
    across = (xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    scale = max(float(np.abs(along[m]).max()), 1.0)
    upslope = along < -0.25 * scale
    rim = m & (depth <= 2.0) & upslope
    # headwall faces downslope: lit when the sun shines from downslope, shaded otherwise
    facing = np.cos(np.radians(style.sun_azimuth) - (np.pi / 2 - theta))
    shade = np.where(rim, 1.0 + style.headwall * (0.6 * facing - 0.4), 1.0)
    streaks = np.sin(across / rng.uniform(1.2, 2.5) + rng.uniform(0, 2 * np.pi))
    tex = _field(rng, (h, w), 0.8)
    soil = (_BARE * np.asarray(style.rts_tint))[:, None, None] * (
        1.0 + style.rts_texture * (0.6 * tex + 0.4 * streaks) - 0.06 * (along / scale)
    )[None]
    alpha = style.rts_contrast * np.clip(depth / 1.5, 0.35, 1.0) * m
    bg = background[:, r0:r1, c0:c1]
    img[:, r0:r1, c0:c1] = np.where(m[None], ((1 - alpha) * bg + alpha * soil) * shade[None], img[:, r0:r1, c0:c1])
    return float(theta)


def generate_scene(
    region: str,
    seed: int,
    size: int = 256,
    *,
    labels_dir: str | os.PathLike[str] | None = None,
    n_slumps: int | None = None,
    max_slump_fraction: float = 0.12,
) -> SyntheticScene:
    """Generate one ``size`` x ``size`` px scene of ``region`` with real RTS outlines pasted in.

    Args:
        region: a key of :data:`pixeldino.synthetic_regions.REGIONS`.
        seed: the scene's seed; ``(region, seed)`` fixes the scene completely.
        size: edge in pixels (10 m each).
        labels_dir: the RTS inventories (default: the shipped ``resources/rts_labels``).
        n_slumps: number of slumps (default: Poisson with the region's density).
        max_slump_fraction: outlines larger than this share of the scene area are not used (a slump must fit).

    Returns:
        The scene; ``mask`` is the union of the slumps' pixel-centre rasters.
    """
    if region not in REGIONS:
        raise KeyError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    style = REGIONS[region]
    rng = _region_rng(region, seed)
    shape = (size, size)
    transform = Affine(PIXEL_SIZE, 0.0, ORIGIN[0], 0.0, -PIXEL_SIZE, ORIGIN[1] + size * PIXEL_SIZE)
    background, lakes = _background(rng, style, shape)
    img = background.copy()

    pool = load_outlines(labels_dir)[region]
    max_area = max_slump_fraction * (size * PIXEL_SIZE) ** 2
    usable = [o for o in pool if 0 < o.area <= max_area]
    km2 = (size * PIXEL_SIZE / 1000.0) ** 2
    n = int(rng.poisson(style.rts_per_km2 * km2)) if n_slumps is None else int(n_slumps)
    mask = np.zeros(shape, dtype=np.uint8)
    slumps: list[PastedSlump] = []
    attempts = 0
    while len(slumps) < n and attempts < 20 * max(n, 1):
        attempts += 1
        outline = usable[int(rng.integers(len(usable)))]
        geom = affinity.rotate(outline.geometry, float(rng.uniform(0, 360)), origin=(0, 0))
        minx, miny, maxx, maxy = geom.bounds
        # the slump lies wholly inside the scene, its centroid on land (many slumps drain into lakes)
        x = rng.uniform(ORIGIN[0] - minx + PIXEL_SIZE, ORIGIN[0] + size * PIXEL_SIZE - maxx - PIXEL_SIZE)
        y = rng.uniform(ORIGIN[1] - miny + PIXEL_SIZE, ORIGIN[1] + size * PIXEL_SIZE - maxy - PIXEL_SIZE)
        col, row = ~transform @ (x, y)
        if not (0 <= int(row) < size and 0 <= int(col) < size) or lakes[int(row), int(col)]:
            continue
        placed = affinity.translate(geom, x, y)
        one = rasterize([(placed, 1)], out_shape=shape, transform=transform, fill=0, dtype="uint8").astype(bool)
        if not one.any() or (mask.astype(bool) & one).any():
            continue  # smaller than a pixel, or overlapping a slump already pasted
        theta = _paste_slump(img, one, rng, style, background)
        mask[one] = 1
        slumps.append(PastedSlump(outline.source, placed, int(one.sum()), outline.area, float(np.degrees(theta))))

    # illumination: terrain shading, regional gain, haze, sensor noise
    relief = _field(rng, shape, style.relief_sigma) * style.relief_sigma * 0.6
    shading = 1.0 + style.relief_amp * (_hillshade(relief, style.sun_azimuth) - 1.0)
    img = (
        img * (style.gain * np.clip(shading, 0.4, 1.6))[None] + np.asarray(style.haze, dtype=np.float64)[:, None, None]
    )
    img = img * np.asarray(style.band_gain, dtype=np.float64)[:, None, None]
    img = img + rng.normal(0.0, style.noise, img.shape)
    image = np.clip(np.rint(img), 1, 65535).astype(np.uint16)  # 0 is nodata
    # the terrain draws from a stream of its own: the image is the same with or without it
    terrain_rng = _region_rng(region, seed, stream=1)
    elevation, dem, dem_transform = scene_terrain(terrain_rng, style, relief, lakes, mask, slumps, transform)
    return SyntheticScene(region, int(seed), image, mask, transform, slumps=slumps, dem=dem,
                          dem_transform=dem_transform, elevation=elevation)  # fmt: skip


def write_scene(scene: SyntheticScene, path: str | os.PathLike[str]) -> Path:
    """Write a scene as a tiled uint16 GeoTIFF whose band descriptions name the bands (as ``pixeldino fetch``)."""
    import rasterio

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = scene.image.shape
    profile = dict(driver="GTiff", width=w, height=h, count=c, dtype="uint16", crs=scene.crs,
                   transform=scene.transform, nodata=0, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")  # fmt: skip
    if h < 256 or w < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
    with rasterio.open(p, "w", **profile) as dst:
        dst.write(scene.image)
        for i, band in enumerate(scene.bands, start=1):
            dst.set_band_description(i, band)
    return p


def write_dem(scene: SyntheticScene, path: str | os.PathLike[str]) -> Path:
    """Write the scene's DEM (30 m, float32 metres, nodata -9999) as a GeoTIFF: the input of ``aux.dem: file``."""
    import rasterio

    if scene.dem is None or scene.dem_transform is None:
        raise ValueError(f"scene {scene.region}/{scene.seed} has no DEM")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    h, w = scene.dem.shape
    with rasterio.open(p, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs=scene.crs,
                       transform=scene.dem_transform, nodata=-9999.0) as dst:  # fmt: skip
        dst.write(scene.dem, 1)
        dst.set_band_description(1, "elevation")
    return p


def write_labels(scene: SyntheticScene, path: str | os.PathLike[str]) -> Path:
    """Write the pasted outlines as a GeoPackage (layer ``rts``) in the scene CRS."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    gdf = gpd.GeoDataFrame(
        {
            "source": [s.source[0] for s in scene.slumps],
            "source_row": [s.source[1] for s in scene.slumps],
            "n_pixels": [s.n_pixels for s in scene.slumps],
        },
        geometry=[s.polygon for s in scene.slumps],
        crs=scene.crs,
    )
    gdf.to_file(p, layer="rts", driver="GPKG")
    return p


def band_statistics(scene: SyntheticScene) -> dict[str, Any]:
    """Per-band mean and standard deviation of the scene's DN (for comparing regions)."""
    x = scene.image.reshape(scene.image.shape[0], -1).astype(np.float64)
    return {"mean": x.mean(axis=1).tolist(), "std": x.std(axis=1).tolist()}
