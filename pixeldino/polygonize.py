"""RTS polygons from a probability raster: threshold, connected components, vectorise, simplify, attribute.

The whole scene is labelled in memory. That is exact across any internal tiling (no seam stitching needed) and
cheap: a 10980 x 10980 uint8 scene needs the probability (120 MB), the binary mask (120 MB) and the int32 label
image (480 MB), about 0.75 GB at peak. Each component is then vectorised on its own bounding box
(``scipy.ndimage.find_objects``), so ``rasterio.features.shapes`` never copies the whole label image.

Components use 8-connectivity; ``shapes`` runs with 4-connectivity on each component and the pieces are dissolved,
so two pixels that touch only at a corner end up as one MultiPolygon instead of one self-touching ring.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS, Geod
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, shape

from pixeldino import quality as q
from pixeldino.errors import ConfigError
from pixeldino.io import atomic_output
from pixeldino.probability import invalid_mask, positive_mask, read_probability, resolve_threshold, to_probability
from pixeldino.rasters import read_raster

LAYER = "rts"
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class PolygonizeParams:
    """Probability raster to polygons (config section ``polygonize``; ``pixeldino polygonize`` options).

    Attributes:
        threshold: probability threshold (p >= threshold is RTS); null takes the model's calibrated threshold (the
            raster's THRESHOLD tag, written by predict), else 0.5.
        min_area_m2: polygons smaller than this are dropped.
        opening_radius: radius (pixels) of a binary opening with a disk before the objects are labelled; 0: none.
        simplify_tolerance: topology-preserving simplification tolerance in CRS units; null: half a pixel.
    """

    threshold: float | None = field(default=None, metadata={"minimum": 0, "maximum": 1})
    min_area_m2: float = field(default=500.0, metadata={"minimum": 0})
    opening_radius: int = field(default=0, metadata={"minimum": 0})
    simplify_tolerance: float | None = field(default=None, metadata={"minimum": 0})

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"polygonize.threshold {self.threshold} must be in [0, 1]")
        if self.opening_radius < 0 or self.min_area_m2 < 0:
            raise ConfigError(
                f"polygonize.opening_radius ({self.opening_radius}) and polygonize.min_area_m2 "
                f"({self.min_area_m2}) must not be negative"
            )


#: Column order and dtypes of the ``rts`` layer; an empty result is written with exactly this schema.
SCHEMA: dict[str, str] = {
    "id": "int64",
    "area_m2": "float64",
    "perimeter_m": "float64",
    "prob_mean": "float64",
    "prob_max": "float64",
    "n_pixels": "int64",
    "scene_id": "object",
    "tile": "object",
    "datetime": "object",
    "touches_nodata": "bool",
    "low_quality_fraction": "float64",
    "water_fraction": "float64",
    "dark_area_fraction": "float64",
    "cirrus_fraction": "float64",
    "permanent_water_fraction": "float64",
    "in_permanent_water": "bool",
    "edge_distance_m": "float64",
    "model": "object",
    "threshold": "float64",
}

#: QGIS style for RTS polygons: red outline, no fill. Both the ``<Option>`` map (QGIS >= 3.26) and the legacy
#: ``<prop>`` list are given so that older QGIS versions read it too.
QML_RED_OUTLINE = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.34.0" styleCategories="Symbology">
  <renderer-v2 type="singleSymbol" symbollevels="0" forceraster="0" enableorderby="0" referencescale="-1">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0" is_animated="0" frame_rate="10">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="color" value="0,0,0,0"/>
            <Option type="QString" name="style" value="no"/>
            <Option type="QString" name="outline_color" value="227,26,28,255"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="0.6"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="joinstyle" value="miter"/>
          </Option>
          <prop k="color" v="0,0,0,0"/>
          <prop k="style" v="no"/>
          <prop k="outline_color" v="227,26,28,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.6"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="joinstyle" v="miter"/>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def write_qgis_style(gpkg: str | os.PathLike[str], layer: str = LAYER, qml: str = QML_RED_OUTLINE) -> None:
    """Embed ``qml`` as the default QGIS style of ``layer`` (a ``layer_styles`` table, as QGIS itself writes it).

    The table is registered in ``gpkg_contents`` as an attributes table, so the file stays a valid GeoPackage
    for GDAL; QGIS applies the style when the layer is opened.
    """
    with sqlite3.connect(gpkg) as con:
        geom_col = con.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        if geom_col is None:
            raise ValueError(f"{gpkg}: no spatial layer {layer!r} to style")
        con.execute(
            """CREATE TABLE IF NOT EXISTS layer_styles (
                 id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
                 f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
                 f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
                 useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
                 update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""
        )
        con.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, last_change) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles', strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
        )
        con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
        con.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
            "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '')",
            (layer, geom_col[0], layer, qml, "pixeldino default: red outline, no fill"),
        )


def empty_frame(crs: Any, schema: dict[str, str] = SCHEMA, extra: dict[str, Any] | None = None) -> gpd.GeoDataFrame:
    """An empty GeoDataFrame with the given column dtypes (plus ``extra`` constant columns) and CRS."""
    columns = {name: pd.Series(dtype=dtype) for name, dtype in schema.items()}
    for name, value in (extra or {}).items():
        columns[name] = pd.Series([value]).iloc[:0]
    return gpd.GeoDataFrame(pd.DataFrame(columns), geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def write_layer(gdf: gpd.GeoDataFrame, out_gpkg: str | os.PathLike[str], layer: str = LAYER) -> None:
    """Write ``gdf`` as a MultiPolygon GeoPackage layer with the pixeldino QGIS style, atomically."""
    with atomic_output(out_gpkg) as tmp:
        pyogrio.write_dataframe(
            gdf, tmp, layer=layer, driver="GPKG", geometry_type="MultiPolygon", promote_to_multi=True
        )
        write_qgis_style(tmp, layer)


def as_multipolygon(geom: shapely.Geometry) -> MultiPolygon:
    """The polygonal part of ``geom`` (made valid if needed) as a MultiPolygon; empty if there is none."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polygons: list[Polygon] = []
    for part in shapely.get_parts(geom):  # make_valid may return a collection with lines: keep areas only
        if isinstance(part, Polygon) and not part.is_empty:
            polygons.append(part)
        elif isinstance(part, MultiPolygon):
            polygons.extend(p for p in part.geoms if not p.is_empty)
    return MultiPolygon(polygons)


def area_and_perimeter(geom: shapely.Geometry, crs: CRS) -> tuple[float, float]:
    """Area (m2) and perimeter (m): planar in a projected metric CRS, geodesic on the ellipsoid otherwise."""
    if crs.is_geographic:
        geod = Geod(ellps="WGS84")
        area, perimeter = geod.geometry_area_perimeter(geom)
        return abs(area), perimeter
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return geom.area * unit * unit, geom.length * unit


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def _read_quality(path: str | os.PathLike[str], info: dict[str, Any], prob_path: Path) -> np.ndarray:
    """The quality mask as an array on the probability raster's grid (InputError if it is on another grid)."""
    with q.open_quality_mask(path, q.Grid(info["crs"], info["transform"], tuple(info["shape"])), prob_path) as src:
        return read_raster(src, 1)


def run_polygonize(
    params: PolygonizeParams,
    prob_path: str | os.PathLike[str],
    out_gpkg: str | os.PathLike[str],
    *,
    quality_mask: str | os.PathLike[str] | None = None,
    water: q.WaterParams | None = None,
    attributes: dict[str, Any] | None = None,
) -> gpd.GeoDataFrame:
    """Vectorise the RTS detections of one probability raster into a GeoPackage layer ``rts``.

    A pixel is positive when ``p >= threshold``. Positive pixels form objects by 8-connectivity.

    Args:
        prob_path: probability raster from :func:`pixeldino.predict.predict_scene` (any single-band raster whose
            band scale/offset turn values into probabilities works).
        out_gpkg: output GeoPackage (written atomically; layer ``rts`` in the raster CRS).
        params: threshold, minimum area, opening and simplification (:class:`PolygonizeParams`).
        attributes: extra constant columns for every polygon (e.g. ``{"region": "Lena"}``).
        quality_mask: optional uint8 quality mask on the raster's grid (nonzero = invalid/cloud/shadow/snow/water,
            as written by :func:`pixeldino.fetch.fetch_scene`). It gives ``low_quality_fraction``: the share of the
            one-pixel ring around the object that the mask flags (the prediction itself is nodata there), i.e. how
            much of the slump's outline may be hidden; NaN without a mask. It also gives the share of the
            object's own pixels in each class the quality policy keeps (``water_fraction``,
            ``dark_area_fraction``, ``cirrus_fraction``; NaN without a mask).
        water: the permanent-water layer (``water.file``: a vector file, or a raster such as a water-occurrence
            map in percent; see :func:`pixeldino.quality.permanent_water_grid`) and its policy; None or no file:
            none. ``permanent_water_fraction`` is the share of the object's pixels inside it (NaN without a
            layer); ``in_permanent_water`` is True above ``water.max_share``; ``water.action`` ``drop`` removes
            those polygons, ``flag`` keeps them.

    Returns:
        The written polygons (columns :data:`SCHEMA` + ``attributes``), geometry MultiPolygon.
        ``edge_distance_m`` is the distance from the object's pixels to the raster edge (the merge prefers
        detections far from their scene edge).
    """
    prob_path = Path(prob_path)
    policy = water or q.WaterParams()
    values, info = read_probability(prob_path)
    thr = resolve_threshold(params.threshold, info["tags"], prob_path)
    crs = CRS.from_user_input(info["crs"])
    transform = info["transform"]
    tolerance = (
        0.5 * min(abs(transform.a), abs(transform.e))
        if params.simplify_tolerance is None
        else params.simplify_tolerance
    )
    tags = info["tags"]
    constants = {
        "scene_id": tags.get("SCENE_ID"),
        "tile": tags.get("TILE"),
        "datetime": tags.get("DATETIME"),
        "model": tags.get("MODEL"),
        "threshold": thr,
    }

    quality = _read_quality(quality_mask, info, prob_path) if quality_mask else None
    water_grid = (
        q.permanent_water_grid(policy.file, crs, transform, info["shape"], min_occurrence=policy.min_occurrence)
        if policy.file
        else None
    )
    pixel_size = min(abs(transform.a), abs(transform.e))
    mask = positive_mask(values, info, thr)
    if params.opening_radius:
        mask = ndimage.binary_opening(mask, structure=_disk(params.opening_radius))
    labels, n = ndimage.label(mask, structure=_EIGHT)
    del mask
    height, width = info["shape"]

    rows: list[dict[str, Any]] = []
    geoms: list[MultiPolygon] = []
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        # One-pixel margin so the neighbourhood test sees the pixels around the object.
        r0, r1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, height)
        c0, c1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, width)
        obj = labels[r0:r1, c0:c1] == label
        n_pixels = int(obj.sum())
        ring = ndimage.binary_dilation(obj, structure=_EIGHT) & ~obj
        at_edge = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == height or sl[1].stop == width
        touches = bool(at_edge or invalid_mask(values[r0:r1, c0:c1][ring], info).any())
        low_quality = float((quality[r0:r1, c0:c1][ring] != 0).mean()) if quality is not None and ring.any() else np.nan
        inside = quality[r0:r1, c0:c1][obj] if quality is not None else None
        kept = {
            f"{name}_fraction": float((inside == q.CLASS_VALUES[name]).mean()) if inside is not None else np.nan
            for name in q.RECORDED_CLASSES
        }
        water_share = float(water_grid[r0:r1, c0:c1][obj].mean()) if water_grid is not None else np.nan
        edge_px = min(sl[0].start, sl[1].start, height - sl[0].stop, width - sl[1].stop)
        window_transform = transform @ Affine.translation(c0, r0)
        pieces = [
            shape(g) for g, _ in shapes(obj.astype(np.uint8), mask=obj, connectivity=4, transform=window_transform)
        ]
        geom = shapely.union_all(pieces)
        if tolerance > 0:
            geom = shapely.simplify(geom, tolerance, preserve_topology=True)
        geom = as_multipolygon(geom)
        if geom.is_empty:
            continue
        area, perimeter = area_and_perimeter(geom, crs)
        if area < params.min_area_m2:
            continue
        p = to_probability(values[r0:r1, c0:c1][obj], info)
        rows.append(
            {
                "area_m2": area,
                "perimeter_m": perimeter,
                "prob_mean": float(p.mean()),
                "prob_max": float(p.max()),
                "n_pixels": n_pixels,
                "touches_nodata": touches,
                "low_quality_fraction": low_quality,
                **kept,
                "permanent_water_fraction": water_share,
                "in_permanent_water": bool(water_share > policy.max_share),  # NaN (no layer) compares False
                "edge_distance_m": edge_px * pixel_size,
            }
        )
        geoms.append(geom)
    del labels
    if policy.action == "drop" and rows:
        keep = [not r["in_permanent_water"] for r in rows]
        rows = [r for r, k in zip(rows, keep) if k]
        geoms = [g for g, k in zip(geoms, keep) if k]

    if rows:
        gdf = gpd.GeoDataFrame(pd.DataFrame(rows), geometry=geoms, crs=info["crs"])
        gdf.insert(0, "id", np.arange(1, len(rows) + 1, dtype=np.int64))
        for name, value in constants.items():
            gdf[name] = value
        gdf = gdf[[*SCHEMA, "geometry"]].astype(SCHEMA)
        for name, value in (attributes or {}).items():
            gdf[name] = value
    else:
        gdf = empty_frame(info["crs"], extra=attributes)
    gdf = gdf.set_geometry("geometry")
    write_layer(gdf, out_gpkg)
    return gdf
