"""The DEM of the auxiliary layers (:mod:`pixeldino.auxlayers`), opened for one scene and warped onto its grid.

The DEM is a local raster (``aux.dem: file``) or the items of a STAC collection that overlap the scene
(``aux.dem: stac``: a static catalog or a STAC API, e.g. Copernicus DEM GLO-30 on Earth Search or Planetary
Computer, or ArcticDEM mosaics). Items in one CRS are mosaicked by a GDAL VRT (nothing is read until the scene's
windows are warped from it); items in several CRSs stay separate datasets, and where they overlap the first with a
value wins (:func:`read_dem`). Every dataset is seen through a bilinear :class:`~rasterio.vrt.WarpedVRT` on the
scene's grid (:func:`warped_dem`), float32 with NaN where the DEM has no value.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from pixeldino.errors import InputError, PixeldinoError, first_line
from pixeldino.providers import Provider, resolve_provider
from pixeldino.rasters import open_raster, read_raster
from pixeldino.retry import GDAL_READ_OPTIONS

if TYPE_CHECKING:
    from pixeldino.auxlayers import AuxParams


@dataclass
class OpenDem:
    """The DEM opened for one scene: one dataset per CRS (a STAC mosaic or the file) and its provenance."""

    datasets: list[Any]
    record: dict[str, Any]


def _s3_to_vsi(href: str) -> tuple[str, bool]:
    """``s3://bucket/key`` as GDAL's ``/vsis3/bucket/key`` (and True: the href is on S3); other hrefs as they are."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://") :], True
    return href, False


def _absolute(href: str) -> str:
    """A local path made absolute (GDAL opens it from any working directory); URLs and GDAL paths as they are."""
    if "://" in href or href.startswith("/vsi"):
        return href
    return str(Path(href).resolve())


def _footprint_4326(crs: CRS, bounds: tuple[float, float, float, float]) -> BaseGeometry:
    """The scene's bounds (with the halo) as a box in EPSG:4326, densified so UTM edges project faithfully."""
    from rasterio.warp import transform_bounds

    return box(*transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))


def _dem_items(provider: Provider, footprint: BaseGeometry, scene_id: str) -> list[Any]:
    """The DEM items of the provider's collection that overlap the footprint (EPSG:4326).

    Raises:
        InputError: the catalog cannot be read or searched, or no item overlaps the scene.
    """
    from pixeldino.items import item_geometry
    from pixeldino.search import _local_items, open_client

    if provider.is_api:
        try:
            search = open_client(provider.catalog).search(
                collections=[provider.collection], intersects=mapping(footprint), max_items=500
            )
            items = list(search.items())
        except PixeldinoError:
            raise
        except Exception as exc:
            raise InputError(
                f"aux: DEM search at {provider.catalog} ({provider.collection}) failed ({first_line(exc)}); "
                "check aux.dem_catalog, aux.dem_collection and the network"
            ) from exc
    else:
        candidates = _local_items(str(Path(provider.catalog).resolve()), provider.collection)
        items = [it for it in candidates if (g := item_geometry(it)) is not None and g.intersects(footprint)]
    if not items:
        raise InputError(
            f"aux: no item of DEM collection {provider.collection} in {provider.catalog} covers scene {scene_id} "
            f"(bounds {', '.join(f'{v:.3f}' for v in footprint.bounds)} in EPSG:4326); check aux.dem_collection "
            "and aux.dem_catalog, or use aux.dem: file"
        )
    return sorted(items, key=lambda it: it.id)


def _mosaic_vrt(datasets: Sequence[Any], path: Path) -> Path:
    """Write a GDAL VRT mosaicking same-CRS single-band rasters (first one wins where they overlap).

    The VRT takes the finest pixel size of its sources and the union of their extents; nothing is read here, so
    a mosaic of many large tiles costs nothing until the windows the scene needs are warped from it.
    """
    res_x = min(abs(ds.transform.a) for ds in datasets)
    res_y = min(abs(ds.transform.e) for ds in datasets)
    left = min(ds.bounds.left for ds in datasets)
    top = max(ds.bounds.top for ds in datasets)
    right = max(ds.bounds.right for ds in datasets)
    bottom = min(ds.bounds.bottom for ds in datasets)
    width, height = math.ceil((right - left) / res_x - 1e-6), math.ceil((top - bottom) / res_y - 1e-6)
    sources = []
    for ds in reversed(datasets):  # later sources are drawn over earlier ones: the first dataset ends on top
        x_off = (ds.bounds.left - left) / res_x
        y_off = (top - ds.bounds.top) / res_y
        x_size = (ds.bounds.right - ds.bounds.left) / res_x
        y_size = (ds.bounds.top - ds.bounds.bottom) / res_y
        nodata = f"<NODATA>{ds.nodata!r}</NODATA>" if ds.nodata is not None else ""
        name = f"/vsicurl/{ds.name}" if ds.name.startswith(("http://", "https://")) else ds.name
        sources.append(
            f'<ComplexSource resampling="bilinear"><SourceFilename relativeToVRT="0">{escape(name)}'
            f"</SourceFilename><SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
            f'<DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" ySize="{y_size!r}"/>{nodata}'
            "</ComplexSource>"
        )
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(datasets[0].crs.to_wkt())}</SRS>'
        f"<GeoTransform>{left!r}, {res_x!r}, 0, {top!r}, 0, {-res_y!r}</GeoTransform>"
        f'<VRTRasterBand dataType="Float32" band="1"><NoDataValue>nan</NoDataValue>{"".join(sources)}'
        "</VRTRasterBand></VRTDataset>"
    )
    path.write_text(xml)
    return path


@contextlib.contextmanager
def open_dem(
    params: AuxParams, crs: CRS, bounds: tuple[float, float, float, float], scene_id: str, tmpdir: Path
) -> Iterator[OpenDem]:
    """Open the DEM for a scene whose (halo-padded) grid has these bounds; closed on exit.

    Raises:
        InputError: the DEM file or an item's asset is missing or unreadable, or no DEM item covers the scene.
        ConfigError: an invalid DEM provider setting.
    """
    with contextlib.ExitStack() as stack:
        if params.dem == "file":
            path = str(params.dem_file)
            ds = stack.enter_context(open_raster(path, "DEM", "check aux.dem_file"))
            yield OpenDem([ds], {"source": "file", "path": str(Path(path).resolve()) if "://" not in path else path})
            return
        provider = resolve_provider(params.stac())
        items = _dem_items(provider, _footprint_4326(crs, bounds), scene_id)
        hrefs = []
        for item in items:
            asset = item.assets.get(params.dem_asset)
            if asset is None:
                raise InputError(
                    f"aux: DEM item {item.id} of {provider.collection} has no asset {params.dem_asset!r} (it has "
                    f"{', '.join(sorted(item.assets)) or 'none'}); set aux.dem_asset"
                )
            hrefs.append(asset.get_absolute_href() or asset.href)
        options = {**GDAL_READ_OPTIONS, **provider.gdal_options()}
        readable = [_s3_to_vsi(provider.sign_href(_absolute(h))) for h in hrefs]
        if any(on_s3 for _, on_s3 in readable) and provider.name != "cdse":
            options["AWS_NO_SIGN_REQUEST"] = "YES"  # the public DEM buckets (Copernicus DEM on AWS) need no keys
        stack.enter_context(rasterio.Env(**options))
        opened = [stack.enter_context(open_raster(h, "DEM item", "check the DEM catalog")) for h, _ in readable]
        by_crs: dict[str, list[Any]] = {}
        for ds in opened:
            by_crs.setdefault(ds.crs.to_wkt(), []).append(ds)
        datasets = []
        for i, group in enumerate(by_crs.values()):
            if len(group) == 1:
                datasets.append(group[0])
            else:
                vrt = _mosaic_vrt(group, tmpdir / f"dem_mosaic_{i}.vrt")
                datasets.append(stack.enter_context(open_raster(vrt, "DEM mosaic", "check the DEM items")))
        record = {
            "source": "stac",
            "provider": provider.name,
            "catalog": provider.catalog,
            "collection": provider.collection,
            "asset": params.dem_asset,
            "items": [it.id for it in items],
            "hrefs": hrefs,
        }
        yield OpenDem(datasets, record)


def warped_dem(ds: Any, crs: CRS, transform: Affine, width: int, height: int) -> WarpedVRT:
    """A view of a DEM dataset on a grid, bilinear, float32 with NaN where the DEM has no value."""
    return WarpedVRT(
        ds, crs=crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear,
        nodata=np.nan, dtype="float32",
    )  # fmt: skip


def read_dem(warped: Sequence[Any], window: Window) -> np.ndarray:
    """The DEM (float64, NaN = no data) over a window of the padded scene grid: the first source with a value."""
    z: np.ndarray | None = None
    for vrt in warped:
        part = read_raster(vrt, 1, window=window, what="DEM", fix="check the DEM source (aux)").astype(np.float64)
        part[~np.isfinite(part)] = np.nan
        z = part if z is None else np.where(np.isfinite(z), z, part)
    assert z is not None
    return z
