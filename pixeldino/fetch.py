"""Fetch one scene from its manifest entry into a 10 m multi-band Cloud-Optimized GeoTIFF (plus quality mask).

Reading. The band files are read where they live (local path, http(s) URL streamed by GDAL ``/vsicurl`` with range
requests, or ``s3://``) with **odc-stac**: the manifest entry becomes a STAC item whose assets carry the projection
of each file (read from its header), and :func:`odc.stac.load` builds a dask array on an explicit output grid:
the finest band's extent in the scene's own UTM CRS, optionally cut to the AOI (snapped outward to the pixel
grid). The output is computed and written in blocks of rows, so memory stays bounded for full 110 km tiles.

Resampling. Bands already on the output grid are copied exactly. The 20 m and 60 m bands are resampled
**bilinearly**: it keeps band-to-band values smooth at the 10 m scale the model sees, never invents values outside
the neighbours' range (unlike cubic), and does not produce the 2 x 2 blocks of nearest neighbour that a
segmentation network can learn. The categorical SCL layer is resampled with nearest neighbour.

Harmonisation. From processing baseline 04.00 (products from 25 January 2022, and the reprocessed Collection-1
archive, baseline 05.00) ESA adds an offset of -1000 to the DN (``BOA_ADD_OFFSET`` in L2A, ``RADIO_ADD_OFFSET``
in L1C): reflectance = (DN - 1000) / 10000. With ``harmonize=True`` (the default) the fetch subtracts it, so
2021 and 2023 scenes are comparable and match the older archive the demo and the paper used; see
:func:`harmonization_offset` for how the baseline is determined (``s2:processing_baseline``, Earth Search's
``earthsearch:boa_offset_applied``, else the acquisition date). L1C and L2A are treated alike because ESA
documents the same offset for both. Valid pixels whose harmonised value would be <= 0 become 1, so that 0 stays
nodata.

Quality mask. When the scene has an SCL asset (L2A), ``<scene>_mask.tif`` (uint8 COG, same grid) is written
next to the scene: 0 = clear land, 1 invalid, 2 cloud, 3 cloud shadow, 4 snow, 5 water, 6 dark area / topographic
shadow, 7 thin cirrus (:mod:`pixeldino.quality`); which of them prediction blanks is the quality policy's choice.
L1C has no SCL: no mask is written and the sidecar records ``"quality_mask": null`` with the reason.

Skipped scenes. A scene with no valid pixel, or (with a mask) no clear pixel, is still written, so that the
workflow's targets stay what the checkpoint manifest promised, but its sidecar says ``"skipped": true`` with the
reason, and a warning is logged; chipping ignores skipped scenes, and prediction on them yields nodata.

Robustness. GDAL retries transient HTTP errors (500, 502, 504, timeouts) itself (``GDAL_HTTP_MAX_RETRY``) and each
header read and block read is retried again with exponential backoff. "Too many requests" and "busy" (429, 503) are
left to pixeldino, because GDAL ignores the ``Retry-After`` header a provider sends with them: before GDAL opens a
remote file, and again after such an error, a HEAD request asks the server, and while it answers 429 or 503 the
fetch waits for as long as its ``Retry-After`` says (an HTTP date or seconds, at most :data:`MAX_RETRY_AFTER_S`),
or with exponential backoff when it says nothing. All outputs are written under temporary names and renamed
when complete, the JSON sidecar last: it marks a finished scene, and :func:`fetch_scene` returns at once when a
finished scene with the same bands, grid settings and harmonisation exists (``overwrite=False``), so an interrupted
batch resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pixeldino import __version__
from pixeldino.bands import S2_BANDS, canonical_bands
from pixeldino.errors import InputError, PixeldinoError
from pixeldino.io import TILED_GTIFF_PROFILE, gtiff_to_cog, read_json, write_json
from pixeldino.providers import Provider, resolve_provider
from pixeldino.quality import CLASS_NAMES, INVALID, mask_path_for, scl_to_mask
from pixeldino.search import load_aoi
from pixeldino.tiles import CIRCUMPOLAR

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Resampling used when a band's native grid differs from the 10 m target grid (see module docs).
RESAMPLING = Resampling.bilinear
#: The processing-baseline offset (DN) and the date from which ESA applied it.
BASELINE_OFFSET = 1000
OFFSET_START = dt.datetime(2022, 1, 25, tzinfo=dt.timezone.utc)
#: Edge of the dask chunks odc-stac loads, and rows written per block.
CHUNK = 2048
#: GDAL options for reading remote files: retries of transient HTTP errors, no directory listing per open.
GDAL_READ_OPTIONS = {
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_TIMEOUT": "60",
    # 429 and 503 come back to Python at once, which honours their Retry-After (GDAL >= 3.10; older GDAL retries
    # them itself with its own delays)
    "GDAL_HTTP_RETRY_CODES": "500,502,504",
}
#: "Come back later" statuses, handled with the server's Retry-After (see module docs).
THROTTLE_STATUSES = (429, 503)
#: Longest Retry-After honoured, seconds (a longer one is capped), and waits before giving up.
MAX_RETRY_AFTER_S = 300.0
THROTTLE_ATTEMPTS = 6
#: Backoff when a throttling server gives no Retry-After: 2, 4, 8, ... s.
THROTTLE_BACKOFF_S = 2.0
_THROTTLED = re.compile(r"\b(429|503)\b|too many requests|slow ?down|server busy", re.IGNORECASE)
#: Python-level attempts for a header or block read that failed with a transient error.
READ_ATTEMPTS = 4
_TRANSIENT = re.compile(r"\b(429|500|502|503|504)\b|timed? ?out|connection|curl error|temporar", re.IGNORECASE)
_SCL = "SCL"


def harmonization_offset(scene: Mapping[str, Any], harmonize: bool = True) -> tuple[int, str]:
    """The DN offset to add to a scene's reflectance bands, and why.

    Returns:
        ``(-1000, reason)`` for processing baseline >= 04.00 data whose offset is still in the DN, else
        ``(0, reason)``. The baseline comes from ``processing_baseline``; when a provider already removed the
        offset (``boa_offset_applied``, Earth Search) nothing is subtracted; without a baseline, scenes acquired
        from 2022-01-25 are taken to carry the offset.
    """
    if not harmonize:
        return 0, "harmonisation disabled (fetch.harmonize: false)"
    if scene.get("boa_offset_applied") is True:
        return 0, "provider already removed the offset (earthsearch:boa_offset_applied)"
    baseline = scene.get("processing_baseline")
    if baseline:
        try:
            value = float(str(baseline))
        except ValueError:
            value = None
        if value is not None:
            if value >= 4.0:
                return -BASELINE_OFFSET, f"processing baseline {baseline} >= 04.00"
            return 0, f"processing baseline {baseline} < 04.00 (no offset)"
    when = scene.get("datetime")
    if when:
        acquired = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        acquired = acquired if acquired.tzinfo else acquired.replace(tzinfo=dt.timezone.utc)
        if acquired >= OFFSET_START:
            return -BASELINE_OFFSET, "baseline unknown; acquired on or after 2022-01-25"
        return 0, "baseline unknown; acquired before 2022-01-25 (no offset)"
    return 0, "baseline and date unknown (no offset)"


def harmonize_dn(block: np.ndarray, offset: int) -> np.ndarray:
    """Add ``offset`` to valid DN (nonzero), keeping 0 as nodata and valid pixels >= 1; returns uint16."""
    if offset == 0:
        return np.clip(block, 0, 65535).astype(np.uint16)
    values = block.astype(np.int32)
    out = np.where(values > 0, np.maximum(values + offset, 1), 0)
    return np.clip(out, 0, 65535).astype(np.uint16)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110), capped at
    :data:`MAX_RETRY_AFTER_S`; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _ask_server(href: str) -> tuple[int | None, float | None]:
    """Status and Retry-After of a HEAD request to an http(s) ``href``; ``(None, None)`` when it cannot be asked."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(href, method="HEAD", headers={"User-Agent": f"pixeldino/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=float(GDAL_READ_OPTIONS["GDAL_HTTP_TIMEOUT"])) as resp:
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, retry_after_seconds(exc.headers.get("Retry-After"))
    except (urllib.error.URLError, OSError, ValueError):
        return None, None  # unreachable or not HTTP: GDAL will say what is wrong


def wait_until_served(href: str, what: str, attempts: int = THROTTLE_ATTEMPTS) -> None:
    """Wait while the server of an http(s) ``href`` answers 429 or 503, as long as its Retry-After says.

    Returns when the server answers anything else (including errors, which the read then reports), after
    ``attempts`` waits, or at once for non-HTTP hrefs.
    """
    if not href.startswith(("http://", "https://")):
        return
    for attempt in range(1, attempts + 1):
        status, retry_after = _ask_server(href)
        if status not in THROTTLE_STATUSES:
            return
        delay = retry_after if retry_after is not None else THROTTLE_BACKOFF_S * 2 ** (attempt - 1)
        log.warning("%s: the server answers %d; waiting %.1f s (%s, %d/%d)", what, status, delay,
                    "its Retry-After" if retry_after is not None else "backoff", attempt, attempts)
        time.sleep(delay)


def _retry(func: Callable[[], T], what: str, attempts: int = READ_ATTEMPTS, href: str | None = None) -> T:
    """Call ``func``; retry transient I/O errors (HTTP 5xx, timeouts) with exponential backoff, and 429/503 once
    the server of ``href`` no longer throttles (honouring its Retry-After, see :func:`wait_until_served`)."""
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except PixeldinoError:
            raise
        except Exception as exc:
            if attempt == attempts or not _TRANSIENT.search(str(exc)):
                raise
            if _THROTTLED.search(str(exc)) and href and href.startswith(("http://", "https://")):
                log.warning("%s failed (%s); retry %d/%d when the server is ready", what, _first_line(exc),
                            attempt, attempts - 1)
                wait_until_served(href, what)
                continue
            delay = 0.5 * 2 ** (attempt - 1)
            if _THROTTLED.search(str(exc)):
                delay = max(delay, THROTTLE_BACKOFF_S * 2 ** (attempt - 1))
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, _first_line(exc), attempt,
                        attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _header(href: str, scene_id: str, band: str) -> dict[str, Any]:
    """CRS, grid and nodata of one band file (a header read: one or two range requests for a remote COG)."""

    def read() -> dict[str, Any]:
        with rasterio.open(href) as ds:
            return {"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width,
                    "count": ds.count, "nodata": ds.nodata, "bounds": ds.bounds, "dtype": ds.dtypes[0]}

    what = f"opening band {band} of scene {scene_id}"
    wait_until_served(href, what)  # a throttling provider's first answer, with its Retry-After, is read here
    try:
        return _retry(read, what, href=href)
    except RasterioError as exc:  # RasterioIOError and friends: missing, corrupt, not a raster, HTTP errors
        raise InputError(
            f"cannot read band {band} of scene {scene_id} at {href} ({_first_line(exc)}); "
            "re-download it or re-run the search"
        ) from exc


def _target_grid(
    headers: Mapping[str, Mapping[str, Any]], crs: CRS, resolution: float, aoi: BaseGeometry | None, scene_id: str
) -> tuple[Affine, int, int]:
    """The output grid: the finest band's extent at ``resolution``, optionally cut to the AOI (snapped outward)."""
    finest = min(headers.values(), key=lambda h: abs(h["transform"].a))
    left, bottom, right, top = finest["bounds"]
    width = int(round((right - left) / resolution))
    height = int(round((top - bottom) / resolution))
    transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    if aoi is None:
        return transform, width, height
    aoi_local = shape(transform_geom("EPSG:4326", crs, mapping(aoi)))
    ax0, ay0, ax1, ay1 = aoi_local.bounds
    col0 = max(0, math.floor((ax0 - left) / resolution))
    col1 = min(width, math.ceil((ax1 - left) / resolution))
    row0 = max(0, math.floor((top - ay1) / resolution))
    row1 = min(height, math.ceil((top - ay0) / resolution))
    if col1 <= col0 or row1 <= row0:
        raise InputError(
            f"the AOI {tuple(round(v, 4) for v in aoi.bounds)} does not overlap scene {scene_id}; "
            "check the AOI or drop the scene from the manifest"
        )
    return transform @ Affine.translation(col0, row0), col1 - col0, row1 - row0


def _stac_item(scene_id: str, when: str | None, hrefs: Mapping[str, str], headers: Mapping[str, Mapping[str, Any]],
               footprint: dict[str, Any]) -> Any:
    """A STAC item for odc-stac: one asset per band, with the projection read from each file's header."""
    import pystac

    stamp = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00")) if when else dt.datetime(1970, 1, 1)
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)
    item = pystac.Item(scene_id, footprint, list(shape(footprint).bounds), stamp, {})
    for band, href in hrefs.items():
        h = headers[band]
        item.add_asset(band, pystac.Asset(
            href, media_type=pystac.MediaType.GEOTIFF, roles=["data"],
            extra_fields={
                "proj:code": h["crs"].to_string(),
                "proj:shape": [h["height"], h["width"]],
                "proj:transform": list(h["transform"])[:6],
                "raster:bands": [{"nodata": h["nodata"] if h["nodata"] is not None else 0,
                                  "data_type": h["dtype"]}],
            },
        ))
    return item


def _absolute(href: str) -> str:
    """odc-stac needs absolute hrefs: make local paths absolute, leave URLs alone."""
    return href if re.match(r"^[a-z][a-z0-9+.-]*://", href) or href.startswith("/vsi") else str(Path(href).resolve())


def _request_signature(bands: list[str], aoi_bbox: list[float] | None, resolution: float, offset: int,
                       want_mask: bool) -> dict[str, Any]:
    return {"bands": bands, "aoi_bbox": aoi_bbox, "resolution": resolution, "offset_applied": offset,
            "mask_requested": want_mask}


def _finished(out: Path, scene_id: str, signature: Mapping[str, Any]) -> bool:
    """True when ``out`` and its sidecar exist, belong to ``scene_id`` and match the requested settings."""
    sidecar = out.with_suffix(".json")
    if not (out.exists() and sidecar.exists()):
        return False
    try:
        meta = read_json(sidecar)
    except InputError:
        return False
    if meta.get("scene_id") != scene_id:
        return False
    if any(meta.get(k) != v for k, v in signature.items()):
        return False
    mask = meta.get("quality_mask")
    return not mask or (out.parent / mask).exists()


def _aoi_near_scene(aoi: Any, scene: Mapping[str, Any], scene_id: str) -> BaseGeometry | None:
    if aoi is None or (isinstance(aoi, str) and aoi == CIRCUMPOLAR):
        return None  # the circumpolar domain covers whole tiles: no cut
    aoi_geom = load_aoi(aoi)
    bbox = scene.get("bbox")
    if aoi_geom is not None and bbox and bbox[0] <= bbox[2]:
        # keep only the AOI parts near this scene: a multi-site AOI may hold parts on the other side of the globe,
        # which do not project sensibly into this scene's UTM zone
        aoi_geom = aoi_geom.intersection(box(*bbox).buffer(0.01))
        if aoi_geom.is_empty:
            raise InputError(
                f"the AOI does not overlap scene {scene_id} (bbox {bbox}); check the AOI or drop the scene"
            )
    return aoi_geom


def fetch_scene(
    scene: Mapping[str, Any],
    bands: list[str],
    out_path: str | os.PathLike[str],
    *,
    aoi: str | os.PathLike[str] | BaseGeometry | list[float] | None = None,
    resolution: float = 10.0,
    harmonize: bool = True,
    quality_mask: bool = True,
    provider: str | Provider | None = None,
    overwrite: bool = True,
    threads: int | None = None,
) -> Path:
    """Read a scene's band files and write them as one multi-band uint16 COG on a common 10 m grid.

    Args:
        scene: one entry of a scene manifest (``id``, ``assets`` {band: href}, ``crs``, ``tile``, ``datetime``,
            ``processing_baseline``, ``mask_asset``...).
        bands: bands to stack, in output order (canonical or provider names).
        out_path: the COG to write. Next to it: the JSON sidecar ``<stem>.json`` (provenance) and, when the
            scene has an SCL asset and ``quality_mask`` is True, ``<stem>_mask.tif``.
        aoi: optional area (vector file, bbox or geometry in EPSG:4326): the output is cut to its bounding box,
            snapped outward to the scene's pixel grid. ``"circumpolar"`` means no cut.
        resolution: output pixel size in the scene CRS units (metres).
        harmonize: remove the processing-baseline >= 04.00 offset (see module docs).
        quality_mask: write the SCL-derived quality mask when the scene has an SCL asset.
        provider: provider name or object used to sign hrefs and to get credentials; default: the scene's
            ``provider`` field, else plain reading.
        overwrite: False returns at once when a finished output with the same settings exists (resume).
        threads: dask threads for reading; default all cores.

    Returns:
        The path of the scene COG.

    Raises:
        InputError: a band asset is missing from the scene, a file cannot be read (missing, corrupt, truncated),
            a band's CRS differs from the manifest's ``crs``, or the AOI misses the scene.
    """
    band_list = canonical_bands(list(bands))
    scene_id = str(scene.get("id", "?"))
    assets: Mapping[str, str] = scene.get("assets") or {}
    missing = [b for b in band_list if b not in assets]
    if missing:
        raise InputError(
            f"scene {scene_id} has no asset for band(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(assets)) or 'none'});"
            " re-run the search with these bands or drop them from 'bands'"
        )
    out = Path(out_path)
    aoi_geom = _aoi_near_scene(aoi, scene, scene_id)
    offset, offset_reason = harmonization_offset(scene, harmonize)
    mask_href = scene.get("mask_asset") if quality_mask else None
    signature = _request_signature(band_list, list(aoi_geom.bounds) if aoi_geom is not None else None,
                                   float(resolution), offset, bool(quality_mask))
    if not overwrite and _finished(out, scene_id, signature):
        log.info("%s is complete (same bands and settings); not fetched again", out)
        return out

    prov = _reading_provider(provider if provider is not None else scene.get("provider"))
    gdal_options = {**GDAL_READ_OPTIONS, **(prov.gdal_options() if prov else {})}
    sign = prov.sign_href if prov else (lambda href: href)
    read_hrefs = {b: _absolute(sign(str(assets[b]))) for b in band_list}
    if mask_href:
        read_hrefs[_SCL] = _absolute(sign(str(mask_href)))
    expected_crs = CRS.from_user_input(scene["crs"]) if scene.get("crs") else None

    with rasterio.Env(**gdal_options):
        headers = {b: _header(href, scene_id, b) for b, href in read_hrefs.items()}
    for band, h in headers.items():
        if h["crs"] is None:
            raise InputError(f"band {band} of scene {scene_id} at {read_hrefs[band]} has no CRS; the file is damaged")
        if h["count"] < 1:
            raise InputError(f"band {band} of scene {scene_id} at {read_hrefs[band]} has no raster band")
        if expected_crs is not None and h["crs"] != expected_crs:
            raise InputError(
                f"band {band} of scene {scene_id} is in {h['crs'].to_string()} but the manifest says {scene['crs']}; "
                "re-run the search (the manifest is stale) or fix the catalog"
            )
    crs = expected_crs or headers[band_list[0]]["crs"]
    band_headers = {b: headers[b] for b in band_list}
    transform, width, height = _target_grid(band_headers, crs, resolution, aoi_geom, scene_id)

    out.parent.mkdir(parents=True, exist_ok=True)
    mask_out = mask_path_for(out)
    small = width < 512 or height < 512
    with ExitStack() as stack:
        # odc-geo still multiplies affines with `*`, which affine deprecates; not ours to fix, and noisy
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        data = _load(scene, read_hrefs, headers, crs, transform, width, height, gdal_options, threads)
        tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.")))
        # intermediate tiled GeoTIFFs live in tmpdir and are deleted on exit; only the COG copies become outputs
        profile = {**TILED_GTIFF_PROFILE, "width": width, "height": height, "crs": crs, "transform": transform}
        if small:
            profile.update(blockxsize=256, blockysize=256)
        stats = _write_blocks(data, band_list, read_hrefs, scene_id, tmpdir, profile, offset, bool(mask_href))
        tags = {
            "scene_id": scene_id, "tile": str(scene.get("tile") or ""), "datetime": str(scene.get("datetime") or ""),
            "processing_baseline": str(scene.get("processing_baseline") or ""), "bands": ",".join(band_list),
            "resampling": RESAMPLING.name, "offset_applied": str(offset), "pixeldino_version": __version__,
        }
        with rasterio.open(tmpdir / "stack.tif", "r+") as dst:
            dst.update_tags(**tags)
            for i, band in enumerate(band_list, start=1):
                dst.set_band_description(i, band)
        blocksize = 256 if small else 512
        written: list[Path] = []
        try:
            if mask_href:
                with rasterio.open(tmpdir / "mask.tif", "r+") as dst:
                    dst.set_band_description(1, "quality")
                    dst.update_tags(scene_id=scene_id, classes=",".join(f"{v} {n}" for v, n in CLASS_NAMES.items()))
                gtiff_to_cog(tmpdir / "mask.tif", mask_out, blocksize=blocksize)
                written.append(mask_out)
            elif mask_out.exists():
                mask_out.unlink()  # a stale mask from an earlier fetch with SCL must not pair with this scene
            gtiff_to_cog(tmpdir / "stack.tif", out, blocksize=blocksize)
            written.append(out)
            sidecar = _sidecar(scene, prov, band_list, crs, transform, width, height, resolution, aoi_geom,
                               offset, offset_reason, mask_href, mask_out, stats, signature)
            write_json(out.with_suffix(".json"), sidecar)
        except BaseException:
            # a COG without its provenance would look complete to the next stage; remove what was written
            for path in written:
                path.unlink(missing_ok=True)
            raise
    if sidecar["skipped"]:
        log.warning("scene %s: %s; written but marked skipped in %s", scene_id, sidecar["skip_reason"],
                    out.with_suffix(".json").name)
    return out


def _reading_provider(provider: str | Provider | None) -> Provider | None:
    """The provider whose signing and credentials reading needs; None for plain files and URLs."""
    if isinstance(provider, Provider):
        return provider
    if provider in ("earth-search", "planetary-computer", "cdse"):
        return resolve_provider(provider)
    return None


def _load(
    scene: Mapping[str, Any],
    hrefs: Mapping[str, str],
    headers: Mapping[str, Mapping[str, Any]],
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    gdal_options: Mapping[str, str],
    threads: int | None,
) -> Any:
    """The lazy (dask-backed) odc-stac dataset of all bands (and SCL) on the output grid."""
    import odc.stac
    from odc.geo.geobox import GeoBox

    geobox = GeoBox((height, width), transform, crs.to_string())
    footprint = geobox.footprint("EPSG:4326", buffer=2 * abs(transform.a), wrapdateline=True)
    item = _stac_item(str(scene.get("id", "scene")), scene.get("datetime"), hrefs, headers, footprint.json)
    odc.stac.configure_rio(cloud_defaults=True, **gdal_options)
    resampling = {b: ("nearest" if b == _SCL else RESAMPLING.name) for b in hrefs}
    loaded = odc.stac.load(
        [item], bands=list(hrefs), geobox=geobox, resampling=resampling, dtype="uint16", nodata=0,
        chunks={"x": CHUNK, "y": CHUNK}, groupby="id", fail_on_error=True,
    )
    loaded.attrs["threads"] = threads or os.cpu_count() or 1
    return loaded


def _write_blocks(
    data: Any,
    bands: list[str],
    hrefs: Mapping[str, str],
    scene_id: str,
    tmpdir: Path,
    profile: dict[str, Any],
    offset: int,
    with_mask: bool,
) -> dict[str, Any]:
    """Compute the dataset block by block into ``stack.tif`` (and ``mask.tif``); returns pixel statistics."""
    import dask

    height, width = profile["height"], profile["width"]
    n_valid = n_clear = 0
    mask_counts = np.zeros(256, dtype=np.int64)
    stack_profile = {**profile, "count": len(bands), "dtype": "uint16", "nodata": 0}
    mask_profile = {**profile, "count": 1, "dtype": "uint8", "nodata": None, "predictor": 1}
    with ExitStack() as files, dask.config.set(scheduler="threads", num_workers=data.attrs["threads"]):
        dst = files.enter_context(rasterio.open(tmpdir / "stack.tif", "w", **stack_profile))
        mdst = files.enter_context(rasterio.open(tmpdir / "mask.tif", "w", **mask_profile)) if with_mask else None
        for row in range(0, height, CHUNK):
            rows = slice(row, min(row + CHUNK, height))
            window = rasterio.windows.Window(0, row, width, rows.stop - row)
            valid = np.zeros((rows.stop - row, width), dtype=bool)
            for i, band in enumerate(bands, start=1):
                block = _compute(data, band, rows, hrefs[band], scene_id)
                valid |= block != 0
                dst.write(harmonize_dn(block, offset), i, window=window)
            n_valid += int(valid.sum())
            if mdst is not None:
                mask = scl_to_mask(_compute(data, _SCL, rows, hrefs[_SCL], scene_id))
                mask[~valid] = INVALID  # no reflectance, no use, whatever SCL says
                mdst.write(mask, 1, window=window)
                mask_counts += np.bincount(mask.ravel(), minlength=256)
                n_clear += int((mask == 0).sum())
    total = height * width
    stats: dict[str, Any] = {"valid_fraction": round(n_valid / total, 6) if total else 0.0}
    if with_mask:
        stats["clear_fraction"] = round(n_clear / total, 6) if total else 0.0
        stats["quality_fractions"] = {name: round(float(mask_counts[v]) / max(total, 1), 6)
                                      for v, name in CLASS_NAMES.items()}
    return stats


def _compute(data: Any, band: str, rows: slice, href: str, scene_id: str) -> np.ndarray:
    """Read one band's rows (dask compute) with retries; I/O failures become one-line InputErrors."""
    what = f"reading band {band} of scene {scene_id}"
    try:
        return _retry(lambda: np.asarray(data[band].isel(time=0, y=rows).values), what, href=href)
    except PixeldinoError:
        raise
    except Exception as exc:  # rasterio, GDAL and odc-stac wrap read errors in several types
        raise InputError(
            f"cannot read band {band} of scene {scene_id} at {href} ({_first_line(exc)}); "
            "the file is corrupt or truncated: re-download it"
        ) from exc


def _sidecar(
    scene: Mapping[str, Any],
    prov: Provider | None,
    bands: list[str],
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    resolution: float,
    aoi_geom: BaseGeometry | None,
    offset: int,
    offset_reason: str,
    mask_href: str | None,
    mask_out: Path,
    stats: Mapping[str, Any],
    signature: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance record written next to the scene (STAC-like; never holds credentials or signed URLs)."""
    if stats["valid_fraction"] == 0:
        skip_reason: str | None = "no valid pixel (all nodata)"
    elif mask_href and stats.get("clear_fraction", 1.0) == 0:
        skip_reason = "no clear pixel (all cloud, shadow, snow, water or invalid in SCL)"
    else:
        skip_reason = None
    if mask_href:
        mask_note = "from SCL"
    elif scene.get("mask_asset"):
        mask_note = "not requested (fetch without quality mask)"
    else:
        mask_note = f"no SCL asset ({scene.get('product_level') or 'product level unknown'})"
    native = {b: S2_BANDS[b].resolution for b in bands}
    return {
        "type": "pixeldino_scene",
        "scene_id": scene.get("id"),
        "stac_id": scene.get("stac_id", scene.get("id")),
        "collection": scene.get("collection"),
        "provider": prov.name if prov else (scene.get("provider") or "local"),
        "tile": scene.get("tile"),
        "datetime": scene.get("datetime"),
        "cloud_cover": scene.get("cloud_cover"),
        "snow_cover": scene.get("snow_cover"),
        "processing_baseline": scene.get("processing_baseline"),
        "product_level": scene.get("product_level"),
        "bands": bands,
        "hrefs": {b: str(scene["assets"][b]) for b in bands},
        "mask_href": str(scene["mask_asset"]) if mask_href else None,
        "harmonized": offset != 0,
        "offset_applied": offset,
        "offset_reason": offset_reason,
        "crs": crs.to_string(),
        "transform": list(transform)[:6],
        "shape": [height, width],
        "resolution": resolution,
        "resampling": RESAMPLING.name,
        "resampling_by_band": {b: "none (native grid)" if native[b] == resolution else RESAMPLING.name
                               for b in bands},
        "aoi_bbox": list(aoi_geom.bounds) if aoi_geom is not None else None,
        "nodata": 0,
        "quality_mask": mask_out.name if mask_href else None,
        "quality_mask_note": mask_note,
        "mask_requested": signature["mask_requested"],
        **stats,
        "skipped": skip_reason is not None,
        "skip_reason": skip_reason,
        "loader": _loader_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pixeldino_version": __version__,
    }


def _loader_version() -> str:
    from importlib.metadata import version

    return f"odc-stac {version('odc-stac')}"


def fetch_manifest(
    manifest: Mapping[str, Any],
    bands: list[str],
    out_dir: str | os.PathLike[str],
    *,
    scene_ids: list[str] | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> list[Path]:
    """Fetch every scene of a manifest into ``out_dir/<scene id>.tif``; finished scenes are not fetched again.

    Args:
        manifest: a manifest from :func:`pixeldino.search.search_scenes` / :func:`~pixeldino.search.read_manifest`.
        bands: bands to stack.
        out_dir: output folder.
        scene_ids: only these scenes (default all).
        overwrite: fetch again even when a finished output with the same settings exists.
        **kwargs: passed on to :func:`fetch_scene` (``aoi``, ``resolution``, ``harmonize``...).

    Raises:
        InputError: a requested scene id is not in the manifest, or a scene fails (see :func:`fetch_scene`).
    """
    scenes = list(manifest["scenes"])
    if scene_ids:
        wanted = set(scene_ids)
        unknown = sorted(wanted - {s["id"] for s in scenes})
        if unknown:
            raise InputError(f"no scene(s) {unknown} in the manifest; pick ids from its 'scenes' list")
        scenes = [s for s in scenes if s["id"] in wanted]
    provider = (manifest.get("provider") or {}).get("name")
    paths = []
    for scene in scenes:
        scene = {"provider": provider, **scene}
        paths.append(fetch_scene(scene, bands, Path(out_dir) / f"{scene['id']}.tif", overwrite=overwrite, **kwargs))
    return paths


def composite_scenes(
    scenes: list[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    method: str = "median",
    rows_per_block: int = 512,
) -> Path:
    """A seasonal composite of fetched scenes of one tile: per pixel, the median over the clear observations.

    A pixel counts as an observation where its bands are not nodata and, for scenes with a quality mask, the mask
    is clear (0). Scenes marked ``skipped`` are left out. The result is a COG with the same bands (uint16, nodata 0
    where no scene saw the pixel clear) and a JSON sidecar listing the inputs.

    Args:
        scenes: scene COGs written by :func:`fetch_scene`, all on the same grid (same tile, same AOI cut).
        out_path: the composite COG to write.
        method: ``median`` (the only method; the median of an even count is the mean of the middle two).
        rows_per_block: rows processed at a time (memory: scenes x bands x rows x width x 4 bytes).

    Raises:
        InputError: no usable scene, grids or bands differ, or a file cannot be read.
    """
    from pixeldino.quality import find_quality_mask, is_skipped

    if method != "median":
        raise InputError(f"composite method {method!r} is not supported; use 'median'")
    usable = [Path(p) for p in scenes if not is_skipped(p)]
    if not usable:
        raise InputError(f"no usable scene among {[Path(p).name for p in scenes]} for a composite; "
                         "all are missing or marked skipped: relax the search limits")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            srcs = [stack.enter_context(rasterio.open(p)) for p in usable]
            masks = [stack.enter_context(rasterio.open(m)) if (m := find_quality_mask(p)) else None for p in usable]
        except RasterioError as exc:
            raise InputError(f"cannot read a scene for the composite ({_first_line(exc)}); fetch it again") from exc
        ref = srcs[0]
        for p, src in zip(usable[1:], srcs[1:]):
            if (src.crs, src.transform, src.shape, src.descriptions) != (ref.crs, ref.transform, ref.shape,
                                                                         ref.descriptions):
                raise InputError(
                    f"scene {p} is not on the grid or band list of {usable[0]}; a composite needs scenes of one "
                    "tile fetched with the same bands and AOI"
                )
        tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.")))
        profile = {**TILED_GTIFF_PROFILE, "width": ref.width, "height": ref.height, "count": ref.count,
                   "dtype": "uint16", "crs": ref.crs, "transform": ref.transform, "nodata": 0}
        n_obs = 0
        with rasterio.open(tmpdir / "composite.tif", "w", **profile) as dst:
            for row in range(0, ref.height, rows_per_block):
                window = rasterio.windows.Window(0, row, ref.width, min(rows_per_block, ref.height - row))
                stack_ = np.stack([src.read(window=window) for src in srcs]).astype(np.float32)  # (N, C, r, w)
                ok = (stack_ != 0).any(axis=1)
                for k, m in enumerate(masks):
                    if m is not None:
                        ok[k] &= m.read(1, window=window) == 0
                n_obs += int(ok.sum())
                stack_[~np.broadcast_to(ok[:, None], stack_.shape)] = np.nan
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: nobody saw them clear
                    med = np.nanmedian(stack_, axis=0)
                dst.write(np.nan_to_num(np.round(med), nan=0).astype(np.uint16), window=window)
            for i, desc in enumerate(ref.descriptions, start=1):
                dst.set_band_description(i, desc)
            dst.update_tags(composite=method, scenes=",".join(p.stem for p in usable))
        gtiff_to_cog(tmpdir / "composite.tif", out, blocksize=256 if min(ref.width, ref.height) < 512 else 512)
    write_json(out.with_suffix(".json"), {
        "type": "pixeldino_composite", "method": method, "scenes": [p.name for p in usable],
        "left_out": [Path(p).name for p in scenes if Path(p) not in usable],
        "bands": list(ref.descriptions), "mean_clear_observations": round(n_obs / (ref.width * ref.height), 3),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "pixeldino_version": __version__,
    })
    return out
