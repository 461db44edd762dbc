"""A STAC catalog of a run's outputs: a collection, one item per scene, items for the merged map and the tracks.

Layout (self-contained, relative hrefs, so the folder can be copied, served over http or published as is)::

    stac/catalog.json                     root catalog
    stac/<collection>/collection.json     collection pixeldino-<run>
    stac/<collection>/<item>/<item>.json  items
    stac/<model item>/<model item>.json   the model card, when given

Scene items (id = scene id) hold the probability COG (``probability``), the pseudo-class QA map
(``pseudo_classes``), the SCL quality mask when the scene had one (``quality_mask``) and the scene's polygons
(``polygons``), with the projection extension (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``) and
the raster extension (``raster:bands``: data type, nodata, scale). Item ``rts-merged`` holds the merged map,
``rts-tracks`` the per-year maps and tracks (when the run has several years). Every item records its processing
provenance: the processing extension (``processing:software`` = pixeldino version, ``processing:lineage``) and
``pixeldino:model``, ``pixeldino:threshold``, ``pixeldino:input_items`` (the source Sentinel-2 STAC item ids) and
``pixeldino:source_collection``. With the model card of the model that made the maps (``model.stac.json``, see
:mod:`pixeldino.modelcard`), the root catalog holds it as an item (``pixeldino-model-<model id>``, its assets
pointing to the model files) and the collection and the items made with that model link to it (``derived_from``).

Validation of the written catalog: :mod:`pixeldino.stac_checks`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
from pyproj import CRS
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from pixeldino import __version__
from pixeldino.errors import InputError
from pixeldino.io import atomic_output, read_json
from pixeldino.quality import CLASS_NAMES
from pixeldino.rasters import open_raster
from pixeldino.stac_checks import EXTENSIONS, PROCESSING

MEDIA = {
    "cog": pystac.MediaType.COG,
    "gpkg": "application/geopackage+sqlite3",
    "parquet": "application/vnd.apache.parquet",
    "png": pystac.MediaType.PNG,
}


def _raster_info(path: Path, what: str = "raster") -> dict[str, Any]:
    """What an item records of a raster: grid, data type, nodata, scale, tags (InputError if it cannot be read)."""
    with open_raster(path, what, "re-run the stage that wrote it") as src:
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


def _proj_code(crs: Any) -> str | None:
    """``EPSG:<code>`` of a CRS, or None where it has no EPSG code (the projection extension allows null)."""
    epsg = CRS.from_user_input(crs).to_epsg()
    return f"EPSG:{epsg}" if epsg else None


def _when(value: str | None, sidecar: str | os.PathLike[str] = "the sidecar") -> dt.datetime:
    """The acquisition time of a sidecar's ``datetime`` (UTC where it names no zone); InputError without one."""
    fix = "fetch the scene with pixeldino, which writes it"
    if not value:
        raise InputError(f"{sidecar}: no acquisition date ('datetime'), so the scene cannot go into the catalog; {fix}")
    try:
        stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{sidecar}: 'datetime' {value!r} is not an ISO 8601 date; {fix}") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def _band(info: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``raster:bands`` entry of a raster: data type, nodata and scale (offset 0) where set, plus ``extra``."""
    band: dict[str, Any] = {"data_type": info["dtype"]}
    if info["nodata"] is not None:
        band["nodata"] = float(info["nodata"])
    if info["scale"] not in (None, 1.0):
        band["scale"] = float(info["scale"])
        band["offset"] = 0.0
    band.update(extra)
    return band


def _cog_asset(path: str | os.PathLike[str], title: str, roles: list[str], band: dict[str, Any]) -> pystac.Asset:
    """A single-band COG asset (absolute href, made relative when the catalog is saved) with its ``raster:bands``."""
    return pystac.Asset(
        str(Path(path).resolve()),
        title=title,
        media_type=MEDIA["cog"],
        roles=roles,
        extra_fields={"raster:bands": [band]},
    )


def _processing(item: pystac.Item, lineage: str, **props: Any) -> None:
    """Record provenance on an item: pixeldino version, ``lineage`` and the ``pixeldino:*`` properties
    that are not None."""
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
    """The STAC item of one scene's outputs (assets with absolute hrefs; made relative when saved).

    Raises:
        InputError: a file is missing or unreadable, or the files are of different scenes (the sidecar's scene id
            differs from the one the probability raster or the pseudo-class map is tagged with).
    """
    if not Path(sidecar).exists():
        raise InputError(f"{sidecar}: scene sidecar not found; `pixeldino fetch` writes it beside the scene")
    meta = read_json(sidecar)
    if not isinstance(meta, dict):
        raise InputError(f"{sidecar}: not a scene sidecar (a JSON object); `pixeldino fetch` writes it")
    prob_path = Path(prob)
    info = _raster_info(prob_path, "probability raster")
    for path in (polygons,):
        if path is not None and not Path(path).exists():
            raise InputError(f"{path}: polygon file not found; run `pixeldino polygonize` for the scene first")
    _same_scene(sidecar, meta, prob_path, info)
    bounds4326 = transform_bounds(info["crs"], "EPSG:4326", *info["bounds"], densify_pts=21)
    footprint = box(*bounds4326)
    item = pystac.Item(
        id=str(meta.get("scene_id") or prob_path.stem.removesuffix("_prob")),
        geometry=mapping(footprint),
        bbox=list(bounds4326),
        datetime=_when(meta.get("datetime"), sidecar),
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
        _cog_asset(
            prob_path, "RTS probability (p x 254, nodata 255)", ["data"], _band(info, unit="1", name="rts_probability")
        ),
    )
    if pseudo:
        pinfo = _raster_info(Path(pseudo), "pseudo-class map")
        _same_scene(sidecar, meta, Path(pseudo), pinfo)
        item.add_asset(
            "pseudo_classes",
            _cog_asset(
                pseudo, "pseudo-class QA map (fixed palette)", ["data", "quality"], _band(pinfo, name="pseudo_class")
            ),
        )
    if mask:
        minfo = _raster_info(Path(mask))
        title = "quality mask from SCL: " + ", ".join(f"{v} {n}" for v, n in CLASS_NAMES.items())
        item.add_asset("quality_mask", _cog_asset(mask, title, ["quality"], _band(minfo, name="quality")))
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


def _same_scene(sidecar: str | os.PathLike[str], meta: dict[str, Any], raster: Path, info: dict[str, Any]) -> None:
    """Refuse a raster of another scene than the sidecar's: the lists were given in different orders.

    ``pixeldino predict`` tags its rasters with the scene id from the fetched scene (``SCENE_ID``); rasters
    without the tag, or sidecars without an id, cannot be compared and pass.
    """
    tagged = {k.upper(): v for k, v in info["tags"].items()}.get("SCENE_ID")
    scene = meta.get("scene_id")
    if tagged and scene and str(tagged) != str(scene):
        raise InputError(
            f"{raster} is of scene {tagged} but its sidecar {sidecar} is of scene {scene}; give the sidecars and "
            "the rasters of each scene in the same order"
        )


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
    """An item of a run-wide vector product (the merged map, the tracks) over the scene items' extent,
    with its ``assets`` (key: path, media kind, title) and the models and thresholds of the scenes."""
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
    model_card: str | os.PathLike[str] | None = None,
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
        model_card: the model card (``model.stac.json``) of the model that made the predictions: it becomes an
            item of the root catalog (:func:`model_item`), and the collection and every item made with that model
            link to it (``derived_from``, as the MLM extension recommends).

    Raises:
        InputError: mismatched inputs, or a model card of another model than the one the predictions name.
        ModelError: an invalid model card.
    """
    from pixeldino.quality import quality_mask_of

    if not sidecars or len(sidecars) != len(probabilities):
        raise InputError(
            f"{out_catalog}: --sidecars and --probabilities must name one file per scene, in the same order "
            f"({len(sidecars)} vs {len(probabilities)})"
        )
    for option, files in (("--pseudo", pseudo), ("--polygons", polygons)):
        if files and len(files) != len(sidecars):
            raise InputError(
                f"{out_catalog}: {option} names {len(files)} files for {len(sidecars)} scenes; give one per scene, "
                "in the order of --sidecars, or none"
            )
    extras = [*(merged or {}).values(), *(change or {}).values()]
    for path in extras:
        if path and not Path(path).exists():
            raise InputError(
                f"{path}: not found; run the stage that writes it (merge or change) first, or leave it out"
            )
    pseudo_maps: list[str | os.PathLike[str] | None] = list(pseudo) or [None] * len(sidecars)
    polygon_files: list[str | os.PathLike[str] | None] = list(polygons) or [None] * len(sidecars)
    items = []
    for side, prob, pse, poly in zip(sidecars, probabilities, pseudo_maps, polygon_files):
        mask = quality_mask_of(side)
        items.append(scene_item(side, prob, pse, poly, mask))
    bbox, dates = _extent(items)
    model = None
    if model_card is not None:
        model = model_item(model_card)
        _check_model(model, items, model_card)
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
    if model is not None:
        _link_model(model, collection)
        catalog.add_item(model)
    out = Path(out_catalog)
    with atomic_output(out) as tmp:
        tmp.mkdir()
        # hrefs relative to the final location, so the renamed folder is self-contained
        catalog.normalize_hrefs(str(out.resolve()))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, dest_href=str(tmp))
    return pystac.Catalog.from_file(str(out / "catalog.json"))


def model_item(model_card: str | os.PathLike[str]) -> pystac.Item:
    """A model card (:mod:`pixeldino.modelcard`) as an item of a catalog, read and checked; its asset hrefs are
    absolute here and become relative to the item's place when the catalog is saved."""
    from pixeldino.modelcard import read_model_card

    path = Path(model_card).resolve()
    item = pystac.Item.from_dict(read_model_card(path), href=str(path), migrate=False, preserve_dict=False)
    for asset in item.assets.values():
        asset.href = asset.get_absolute_href() or asset.href
    return item


def _item_models(item: pystac.Item) -> set[str]:
    """The model ids an item's outputs were made with (``pixeldino:model``: one id or a list)."""
    value = item.properties.get("pixeldino:model")
    return set(value) if isinstance(value, list) else {value} if value else set()


def _check_model(model: pystac.Item, scenes: Sequence[pystac.Item], card: str | os.PathLike[str]) -> None:
    """The card must describe a model the scene predictions were made with (when they name one)."""
    mid = model.properties.get("pixeldino:model_id")
    used = set().union(*(_item_models(i) for i in scenes))
    if used and mid not in used:
        raise InputError(
            f"{card}: the card describes model {mid} but the predictions were made with {', '.join(sorted(used))}; "
            "pass the card of the model that made them"
        )


def _link_model(model: pystac.Item, collection: pystac.Collection) -> None:
    """``derived_from`` links to the model card from the collection and from each item made with that model."""
    mid = model.properties.get("pixeldino:model_id")

    def link() -> pystac.Link:
        """A fresh ``derived_from`` link to the model card (a link object belongs to one STAC object)."""
        return pystac.Link(
            "derived_from", model, media_type=pystac.MediaType.GEOJSON, title=f"model card of model {mid} (MLM)"
        )

    collection.add_link(link())
    for item in collection.get_items():
        if not _item_models(item) or mid in _item_models(item):
            item.add_link(link())


def collection_summary(catalog_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Item ids and asset keys of a catalog (for logs and the CLI)."""
    cat = pystac.Catalog.from_file(str(catalog_json))
    return {item.id: sorted(item.assets) for item in cat.get_items(recursive=True)}
