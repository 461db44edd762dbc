"""A STAC catalog of a run's outputs: a collection, one item per scene, items for the merged map and the tracks.

Layout (self-contained, relative hrefs, so the folder can be copied, served over http or published as is)::

    stac/catalog.json                     root catalog
    stac/<collection>/collection.json     collection pixeldino-<run>
    stac/<collection>/<item>/<item>.json  items

Scene items (id = scene id) hold the probability COG (``probability``), the pseudo-class QA map
(``pseudo_classes``), the SCL quality mask when the scene had one (``quality_mask``) and the scene's polygons
(``polygons``), with the projection extension (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``) and
the raster extension (``raster:bands``: data type, nodata, scale). Item ``rts-merged`` holds the merged map,
``rts-tracks`` the per-year maps and tracks (when the run has several years). Every item records its processing
provenance: the processing extension (``processing:software`` = pixeldino version, ``processing:lineage``) and
``pixeldino:model``, ``pixeldino:threshold``, ``pixeldino:input_items`` (the source Sentinel-2 STAC item ids) and
``pixeldino:source_collection``.

Validation (:func:`validate_catalog`) runs pystac's JSON-schema validation offline. pystac ships the core STAC
schemas (item, catalog, collection, GeoJSON) but fetches extension schemas from stac-extensions.github.io; without
network those cannot be fetched, so extension fields are then checked by :func:`check_extension_fields` against
the rules of the extension versions used here (projection v2.0.0, raster v1.1.0, processing v1.2.0). Give
``schema_dir`` (a folder of downloaded extension ``schema.json`` files, named ``<extension>-<version>.json``,
e.g. ``projection-v2.0.0.json``) to validate extensions against the official schemas offline as well.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pyproj import CRS
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from pixeldino import __version__
from pixeldino.errors import InputError, first_line
from pixeldino.io import atomic_output, read_json
from pixeldino.quality import CLASS_NAMES

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EXTENSIONS = (PROJECTION, RASTER, PROCESSING)
MEDIA = {
    "cog": pystac.MediaType.COG,
    "gpkg": "application/geopackage+sqlite3",
    "parquet": "application/vnd.apache.parquet",
    "png": pystac.MediaType.PNG,
}
_DATA_TYPES = {
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "cint16",
    "cint32",
    "cfloat32",
    "cfloat64",
    "other",
}


def _raster_info(path: Path) -> dict[str, Any]:
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(f"{path}: raster has no CRS; re-create it with pixeldino")
            return {
                "crs": src.crs,
                "shape": [src.height, src.width],
                "transform": list(src.transform)[:6],
                "bounds": list(src.bounds),
                "nodata": src.nodata,
                "dtype": src.dtypes[0],
                "scale": src.scales[0] if src.scales else 1.0,
                "tags": src.tags(),
                "desc": src.descriptions[0],
            }
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path}: cannot read ({exc}); re-run the stage that wrote it") from None


def _proj_code(crs: Any) -> str | None:
    epsg = CRS.from_user_input(crs).to_epsg()
    return f"EPSG:{epsg}" if epsg else None


def _when(value: str | None) -> dt.datetime:
    if not value:
        raise InputError("a scene without acquisition date cannot go into the catalog; fetch it with pixeldino")
    stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def _band(info: dict[str, Any], **extra: Any) -> dict[str, Any]:
    band: dict[str, Any] = {"data_type": info["dtype"]}
    if info["nodata"] is not None:
        band["nodata"] = float(info["nodata"])
    if info["scale"] not in (None, 1.0):
        band["scale"] = float(info["scale"])
        band["offset"] = 0.0
    band.update(extra)
    return band


def _processing(item: pystac.Item, lineage: str, **props: Any) -> None:
    item.properties["processing:software"] = {"pixeldino": __version__}
    item.properties["processing:lineage"] = lineage
    item.properties.update({f"pixeldino:{k}": v for k, v in props.items() if v is not None})


def scene_item(
    sidecar: str | os.PathLike[str],
    prob: str | os.PathLike[str],
    pseudo: str | os.PathLike[str] | None,
    polygons: str | os.PathLike[str] | None,
    mask: str | os.PathLike[str] | None = None,
) -> pystac.Item:
    """The STAC item of one scene's outputs (assets with absolute hrefs; made relative when saved)."""
    meta = read_json(sidecar)
    prob_path = Path(prob)
    info = _raster_info(prob_path)
    bounds4326 = transform_bounds(info["crs"], "EPSG:4326", *info["bounds"], densify_pts=21)
    footprint = box(*bounds4326)
    item = pystac.Item(
        id=str(meta.get("scene_id") or prob_path.stem.removesuffix("_prob")),
        geometry=mapping(footprint),
        bbox=list(bounds4326),
        datetime=_when(meta.get("datetime")),
        properties={},
        stac_extensions=list(EXTENSIONS),
    )
    item.properties.update(
        {
            "proj:code": _proj_code(info["crs"]),
            "proj:shape": info["shape"],
            "proj:transform": info["transform"],
            "proj:bbox": info["bounds"],
            "gsd": float(abs(info["transform"][0])),
        }
    )
    if meta.get("tile"):
        item.properties["grid:code"] = f"MGRS-{meta['tile']}"
    tags = info["tags"]
    _processing(
        item,
        "pixeldino fetch, predict, polygonize",
        model=tags.get("MODEL"),
        threshold=float(tags["THRESHOLD"]) if tags.get("THRESHOLD") else None,
        input_items=[meta.get("stac_id") or meta.get("scene_id")],
        source_collection=meta.get("collection"),
        source_provider=meta.get("provider"),
        tile=meta.get("tile"),
    )
    item.add_asset(
        "probability",
        pystac.Asset(
            str(prob_path.resolve()),
            title="RTS probability (p x 254, nodata 255)",
            media_type=MEDIA["cog"],
            roles=["data"],
            extra_fields={"raster:bands": [_band(info, unit="1", name="rts_probability")]},
        ),
    )
    if pseudo:
        pinfo = _raster_info(Path(pseudo))
        item.add_asset(
            "pseudo_classes",
            pystac.Asset(
                str(Path(pseudo).resolve()),
                title="pseudo-class QA map (fixed palette)",
                media_type=MEDIA["cog"],
                roles=["data", "quality"],
                extra_fields={"raster:bands": [_band(pinfo, name="pseudo_class")]},
            ),
        )
    if mask:
        minfo = _raster_info(Path(mask))
        item.add_asset(
            "quality_mask",
            pystac.Asset(
                str(Path(mask).resolve()),
                title="quality mask from SCL: " + ", ".join(f"{v} {n}" for v, n in CLASS_NAMES.items()),
                media_type=MEDIA["cog"],
                roles=["quality"],
                extra_fields={"raster:bands": [_band(minfo, name="quality")]},
            ),
        )
    if polygons:
        item.add_asset(
            "polygons",
            pystac.Asset(
                str(Path(polygons).resolve()),
                title="RTS polygons (layer rts)",
                media_type=MEDIA["gpkg"],
                roles=["data"],
            ),
        )
    return item


def _extent(items: Sequence[pystac.Item]) -> tuple[list[float], list[dt.datetime]]:
    """The bbox around the scene items and their sorted dates (scene items always have both)."""
    boxes = [i.bbox for i in items if i.bbox is not None]
    dates = sorted(i.datetime for i in items if i.datetime is not None)
    if len(boxes) != len(items) or len(dates) != len(items):
        raise InputError("a scene item without bbox or datetime; fetch the scene again with pixeldino")
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return bbox, dates


def _vector_item(
    item_id: str, title: str, assets: dict[str, tuple[Path, str, str]], scenes: list[pystac.Item], lineage: str
) -> pystac.Item:
    (west, south, east, north), dates = _extent(scenes)
    item = pystac.Item(
        item_id,
        mapping(box(west, south, east, north)),
        [west, south, east, north],
        None,
        {"title": title, "start_datetime": dates[0].isoformat(), "end_datetime": dates[-1].isoformat()},
        stac_extensions=[PROCESSING],
    )
    models = sorted({i.properties["pixeldino:model"] for i in scenes if i.properties.get("pixeldino:model")})
    thresholds = sorted(
        {i.properties["pixeldino:threshold"] for i in scenes if i.properties.get("pixeldino:threshold") is not None}
    )
    _processing(
        item,
        lineage,
        model=models[0] if len(models) == 1 else models or None,
        threshold=thresholds[0] if len(thresholds) == 1 else thresholds or None,
        input_items=sorted({s for i in scenes for s in i.properties.get("pixeldino:input_items", [])}),
    )
    for key, (path, kind, asset_title) in assets.items():
        item.add_asset(
            key,
            pystac.Asset(
                str(path.resolve()),
                title=asset_title,
                media_type=MEDIA[kind],
                roles=["overview"] if kind == "png" else ["data"],
            ),
        )
    return item


def build_catalog(
    out_catalog: str | os.PathLike[str],
    *,
    run: str,
    sidecars: Sequence[str | os.PathLike[str]],
    probabilities: Sequence[str | os.PathLike[str]],
    pseudo: Sequence[str | os.PathLike[str]] = (),
    polygons: Sequence[str | os.PathLike[str]] = (),
    merged: dict[str, str | os.PathLike[str]] | None = None,
    change: dict[str, str | os.PathLike[str]] | None = None,
    description: str | None = None,
) -> pystac.Catalog:
    """Write the run's STAC catalog (self-contained, relative hrefs) into the folder ``out_catalog``.

    Args:
        out_catalog: folder to write (atomically replaced); ``catalog.json`` is its root.
        run: run name (collection id ``pixeldino-<run>``).
        sidecars, probabilities, pseudo, polygons: per scene, in the same order: the scene's JSON sidecar (from
            fetch), probability COG, pseudo-class map (optional), polygons (optional). A quality mask the sidecar
            names is added when it exists.
        merged: ``{"gpkg": ..., "parquet": ...}`` of the merged map.
        change: ``{"gpkg", "tracks_parquet", "years_parquet", "change_png", "growth_png"}`` (any subset).
        description: collection description.
    """
    from pixeldino.quality import quality_mask_of

    if not sidecars or len(sidecars) != len(probabilities):
        raise InputError(
            f"{out_catalog}: need one sidecar per probability raster ({len(sidecars)} vs "
            f"{len(probabilities)}); pass them in the same order"
        )
    pseudo_maps: list[str | os.PathLike[str] | None] = list(pseudo) or [None] * len(sidecars)
    polygon_files: list[str | os.PathLike[str] | None] = list(polygons) or [None] * len(sidecars)
    items = []
    for side, prob, pse, poly in zip(sidecars, probabilities, pseudo_maps, polygon_files):
        mask = quality_mask_of(side)
        items.append(scene_item(side, prob, pse, poly, mask))
    bbox, dates = _extent(items)
    collection = pystac.Collection(
        id=f"pixeldino-{run}",
        title=f"pixeldino RTS maps: run {run}",
        description=description
        or (
            "Retrogressive thaw slump (RTS) probability, pseudo-class QA maps and polygons per Sentinel-2 scene, "
            "the merged map and, over several years, per-year maps and slump tracks, made with pixeldino "
            f"{__version__}."
        ),
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[dates[0], dates[-1]]])),
        license="other",
        keywords=["retrogressive thaw slumps", "permafrost", "Sentinel-2", "PixelDINO"],
        providers=[
            pystac.Provider(
                "pixeldino", roles=[pystac.ProviderRole.PROCESSOR], url="https://github.com/pixeldino/pixeldino"
            )
        ],
    )
    collection.add_items(items)
    if merged:
        assets = {"gpkg": (Path(merged["gpkg"]), "gpkg", "merged RTS map (layers rts, rts_detections)")}
        if merged.get("parquet"):
            assets["parquet"] = (Path(merged["parquet"]), "parquet", "merged RTS map (GeoParquet)")
        collection.add_item(_vector_item("rts-merged", "merged RTS map", assets, items, "pixeldino merge"))
    if change:
        kinds = {
            "gpkg": ("gpkg", "per-year maps rts_<year>, tracks rts_tracks, links rts_track_links"),
            "tracks_parquet": ("parquet", "RTS tracks (GeoParquet)"),
            "years_parquet": ("parquet", "per-year RTS maps in one table, column year (GeoParquet)"),
            "change_png": ("png", "change map: tracks by status"),
            "growth_png": ("png", "growth distribution"),
        }
        assets = {k: (Path(v), *kinds[k]) for k, v in change.items() if v}
        collection.add_item(
            _vector_item("rts-tracks", "RTS tracks and per-year maps", assets, items, "pixeldino coregister, change")
        )
    catalog = pystac.Catalog(
        id=f"pixeldino-{run}-catalog", title=f"pixeldino run {run}", description=f"Outputs of the pixeldino run {run}."
    )
    catalog.add_child(collection)
    out = Path(out_catalog)
    with atomic_output(out) as tmp:
        tmp.mkdir()
        # hrefs relative to the final location, so the renamed folder is self-contained
        catalog.normalize_hrefs(str(out.resolve()))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, dest_href=str(tmp))
    return pystac.Catalog.from_file(str(out / "catalog.json"))


# ---------------------------------------------------------------- validation
def _is_number_list(value: Any, lengths: tuple[int, ...]) -> bool:
    return (
        isinstance(value, list)
        and len(value) in lengths
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def check_extension_fields(obj: dict[str, Any]) -> list[str]:
    """Problems with the projection/raster/processing fields of one STAC item dict (empty list = valid)."""
    problems = []
    props = obj.get("properties", {})
    sources = [("properties", props)] + [(f"assets.{k}", a) for k, a in obj.get("assets", {}).items()]
    for where, fields in sources:
        if "proj:code" in fields and not (fields["proj:code"] is None or isinstance(fields["proj:code"], str)):
            problems.append(f"{where}: proj:code must be a string or null")
        if "proj:shape" in fields and not (
            _is_number_list(fields["proj:shape"], (2,))
            and all(isinstance(v, int) and v >= 0 for v in fields["proj:shape"])
        ):
            problems.append(f"{where}: proj:shape must be two non-negative integers")
        if "proj:transform" in fields and not _is_number_list(fields["proj:transform"], (6, 9)):
            problems.append(f"{where}: proj:transform must be 6 or 9 numbers")
        if "proj:bbox" in fields and not _is_number_list(fields["proj:bbox"], (4, 6)):
            problems.append(f"{where}: proj:bbox must be 4 or 6 numbers")
        for band in fields.get("raster:bands", []) if isinstance(fields.get("raster:bands", []), list) else [None]:
            if not isinstance(band, dict):
                problems.append(f"{where}: raster:bands must be a list of objects")
                continue
            if "data_type" in band and band["data_type"] not in _DATA_TYPES:
                problems.append(f"{where}: raster:bands data_type {band['data_type']!r} is not a STAC data type")
            for key in ("nodata", "scale", "offset"):
                if key in band and not isinstance(band[key], (int, float, str)):
                    problems.append(f"{where}: raster:bands {key} must be a number")
    software = props.get("processing:software")
    if software is not None and not (isinstance(software, dict) and all(isinstance(v, str) for v in software.values())):
        problems.append("properties: processing:software must map names to version strings")
    if "processing:lineage" in props and not isinstance(props["processing:lineage"], str):
        problems.append("properties: processing:lineage must be a string")
    return problems


def validate_catalog(catalog_json: str | os.PathLike[str], schema_dir: str | os.PathLike[str] | None = None) -> int:
    """Validate every object of a catalog offline; returns the number of objects validated.

    Core STAC (catalog, collection, item, GeoJSON) is validated by pystac against the schemas it ships.
    Extension schemas are taken from ``schema_dir`` when given (files ``<name>-<version>.json``), else the
    extension fields are checked by :func:`check_extension_fields`.

    Raises:
        InputError: the first invalid object, naming its file and the problem.
    """
    from pystac.validation import JsonSchemaSTACValidator
    from pystac.validation.stac_validator import GetSchemaError

    local: dict[str, dict[str, Any]] = {}
    if schema_dir is not None:
        for path in Path(schema_dir).glob("*.json"):
            name, _, version = path.stem.rpartition("-")
            local[f"https://stac-extensions.github.io/{name}/{version}/schema.json"] = json.loads(path.read_text())

    class OfflineValidator(JsonSchemaSTACValidator):
        def __init__(self) -> None:
            super().__init__()
            self.schema_cache.update(local)

        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            if schema_uri not in self.schema_cache and schema_uri.startswith("http"):
                # never go to the network: an unknown schema is a GetSchemaError, handled below
                raise GetSchemaError(schema_uri, OSError("offline: schema not shipped"))
            return super()._get_schema(schema_uri)

        def validate_extension(
            self,
            stac_dict: dict[str, Any],
            stac_object_type: Any,
            stac_version: str,
            extension_id: str,
            href: str | None = None,
        ) -> Any:
            if extension_id in self.schema_cache:
                return super().validate_extension(stac_dict, stac_object_type, stac_version, extension_id, href)
            if extension_id not in EXTENSIONS:
                raise InputError(
                    f"{href}: extension {extension_id} has no offline check; give its schema in schema_dir"
                )
            problems = check_extension_fields(stac_dict)
            if problems:
                raise InputError(f"{href}: {problems[0]} ({extension_id})")
            return extension_id

    root = Path(catalog_json)
    if not root.exists():
        raise InputError(f"{root}: catalog not found; run `pixeldino catalog` first")
    validator = OfflineValidator()
    count = 0
    for path in sorted(root.parent.rglob("*.json")):
        data = json.loads(path.read_text())
        if data.get("type") not in ("Catalog", "Collection", "Feature"):
            continue
        try:
            pystac.validation.validate_dict(data, href=str(path), validator=validator)
        except pystac.errors.STACValidationError as exc:
            raise InputError(f"{path}: not valid STAC ({first_line(exc)})") from None
        count += 1
    return count


def collection_summary(catalog_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Item ids and asset keys of a catalog (for logs and the CLI)."""
    cat = pystac.Catalog.from_file(str(catalog_json))
    return {item.id: sorted(item.assets) for item in cat.get_items(recursive=True)}
