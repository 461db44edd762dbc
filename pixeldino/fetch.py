"""Fetch scenes from their manifest entries into 10 m multi-band Cloud-Optimized GeoTIFFs (plus quality masks).

The fetch stage (:func:`run_fetch`; config section ``fetch``, :class:`FetchParams`) writes each scene of the
manifest as ``<scene id>.tif``: a uint16 COG of the requested bands on one grid, read where the files live and
resampled with odc-stac (:mod:`pixeldino.loader`; flaky and throttling servers are handled by
:mod:`pixeldino.retry`), with the processing-baseline offset removed (:mod:`pixeldino.harmonize`). Per-tile
seasonal composites are optional (:mod:`pixeldino.composite`).

Quality mask. When the scene has an SCL asset (L2A), ``<scene>_mask.tif`` (uint8 COG, same grid) is written
next to the scene: 0 = clear land, 1 invalid, 2 cloud, 3 cloud shadow, 4 snow, 5 water, 6 dark area / topographic
shadow, 7 thin cirrus (:mod:`pixeldino.quality`); which of them prediction blanks is the quality policy's choice.
L1C has no SCL: no mask is written and the sidecar records ``"quality_mask": null`` with the reason.

Skipped scenes. A scene with no valid pixel, or (with a mask) no clear pixel, is still written, so that the
workflow's targets stay what the checkpoint manifest promised, but its sidecar says ``"skipped": true`` with the
reason, and a warning is logged; chipping ignores skipped scenes, and prediction on them yields nodata.

Reads that cannot lie. Every band is read with decoding in the reading thread and every error GDAL reports
counted (:mod:`pixeldino.rasters`), so a band that fails to decode (a truncated JPEG2000 file, a cut-off download)
aborts the scene with one line naming the file, instead of being written with zeros.

Resume. All outputs are written under temporary names and renamed when complete, the JSON sidecar last, with a
completion record: the request (bands, AOI cut, resolution, offset, mask, asset hrefs) and the SHA-256 of the COG
and the mask (:mod:`pixeldino.sidecar`). With ``overwrite=False`` :func:`fetch_scene` returns at once when the scene
was completed with the same request and its files are unchanged, so an interrupted batch resumes where it stopped,
and a scene truncated or modified since (or left by a faulty earlier run) is fetched again. A failed or interrupted
scene leaves neither COG, mask nor sidecar.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import rasterio
from rasterio.crs import CRS
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pixeldino import __version__
from pixeldino.auxlayers import AuxParams, add_aux_layers, aux_request
from pixeldino.bands import canonical_bands
from pixeldino.composite import CompositeMethod, composite_scenes
from pixeldino.errors import ConfigError, InputError
from pixeldino.harmonize import harmonization_offset
from pixeldino.io import TILED_GTIFF_PROFILE, gtiff_to_cog, temporary, write_json, writing
from pixeldino.loader import (
    RESAMPLING,
    SCL_BAND,
    absolute_href,
    load_scene,
    read_header,
    target_grid,
    write_blocks,
)
from pixeldino.manifest import read_manifest, select_scenes
from pixeldino.providers import PRESETS, Provider, StacParams, resolve_provider
from pixeldino.quality import CLASS_NAMES, mask_path_for
from pixeldino.rasters import READ_OPTIONS, georeference_problem
from pixeldino.retry import GDAL_READ_OPTIONS
from pixeldino.sidecar import is_finished, request_signature, scene_sidecar
from pixeldino.tiles import AoiValue, load_aoi

log = logging.getLogger(__name__)


@dataclass
class FetchParams:
    """How scenes are fetched: the config section ``fetch`` and the options of ``pixeldino fetch``.

    Attributes:
        clip_to_aoi: read only the part of each scene that covers the AOI (search.aoi) instead of the whole tile.
        resolution: output pixel size in metres (in the scene's UTM CRS).
        harmonize: remove the -1000 DN offset of processing baseline >= 04.00 (from 25 January 2022) so that
            scenes of all years are comparable; see pixeldino/harmonize.py.
        quality_mask: write <scene>_mask.tif from the SCL layer when the scene has one (L2A).
        local: workflow only: run the fetch jobs on the host Snakemake runs on (a localrule) instead of
            submitting them, for clusters whose compute nodes have no internet. The `network` resource of the
            profiles still caps how many run at once. Or fetch everything first on a login node: `snakemake
            fetch_all`.
        composite: none: one raster per scene (the pipeline's input). median: additionally build a per-tile
            seasonal median of the fetched scenes over clear pixels (workflow target 'composites').
    """

    clip_to_aoi: bool = False
    resolution: float = field(default=10.0, metadata={"exclusiveMinimum": 0})
    harmonize: bool = True
    quality_mask: bool = True
    local: bool = False
    composite: CompositeMethod = "none"

    def __post_init__(self) -> None:
        if not self.resolution > 0:
            raise ConfigError(f"fetch.resolution must be a positive number of metres, got {self.resolution}")
        if self.composite not in get_args(CompositeMethod):
            raise ConfigError(
                f"fetch.composite {self.composite!r} is not one of {', '.join(get_args(CompositeMethod))}"
            )


@dataclass(frozen=True)
class FetchReport:
    """What :func:`fetch_manifest` did.

    Attributes:
        scenes: the COG of every selected scene, in manifest order.
        reused: those of ``scenes`` that were already finished with the same request and were not fetched again.
        composites: the per-tile composites written.
    """

    scenes: list[Path]
    reused: list[Path]
    composites: list[Path]

    @property
    def fetched(self) -> list[Path]:
        """The scenes fetched by this call."""
        reused = set(self.reused)
        return [p for p in self.scenes if p not in reused]


def run_fetch(
    params: FetchParams,
    *,
    manifest: str | os.PathLike[str],
    bands: Sequence[str],
    out_dir: str | os.PathLike[str],
    scene_ids: Sequence[str] | None = None,
    aoi: AoiValue = None,
    composites_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    aux: AuxParams | None = None,
) -> FetchReport:
    """The fetch stage: fetch the scenes of a manifest file (see :func:`fetch_manifest`).

    Args:
        params: how (config section ``fetch``).
        manifest: the scene manifest written by the search.
        bands: bands to stack, in output order.
        out_dir: the folder of the scene outputs (``<scene id>.tif``, ``.json``, ``_mask.tif``).
        scene_ids: only these scenes (default all).
        aoi: the area the scenes are cut to when ``params.clip_to_aoi`` (the search's ``aoi``).
        composites_dir: where the per-tile composites (``<tile>.tif``) go when ``params.composite`` is not
            ``none``; None builds none (the workflow builds them in a rule of their own).
        overwrite: fetch again even when a finished output with the same request exists.
        threads: dask threads for reading; default all cores.
        aux: auxiliary layers added to every scene (config section ``aux``, :mod:`pixeldino.auxlayers`).

    Raises:
        InputError: the manifest is invalid, a requested scene id is not in it, or a scene fails.
    """
    return fetch_manifest(
        read_manifest(manifest),
        bands,
        out_dir,
        params,
        scene_ids=scene_ids,
        aoi=aoi,
        composites_dir=composites_dir,
        overwrite=overwrite,
        threads=threads,
        source=str(manifest),
        aux=aux,
    )


def fetch_manifest(
    manifest: Mapping[str, Any],
    bands: Sequence[str],
    out_dir: str | os.PathLike[str],
    params: FetchParams | None = None,
    *,
    scene_ids: Sequence[str] | None = None,
    aoi: AoiValue = None,
    composites_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    source: str = "the manifest",
    aux: AuxParams | None = None,
) -> FetchReport:
    """Fetch scenes of a manifest into ``out_dir/<scene id>.tif``; finished scenes are not fetched again.

    Args:
        manifest: a manifest from :func:`pixeldino.search.search_scenes` / :func:`pixeldino.manifest.read_manifest`.
        bands: bands to stack, in output order.
        out_dir: output folder.
        params: fetch settings; None: :class:`FetchParams` defaults.
        scene_ids: only these scenes (default all).
        aoi: the area the scenes are cut to when ``params.clip_to_aoi``.
        composites_dir: where the per-tile composites go when ``params.composite`` is not ``none``; None: none.
        overwrite: fetch again even when a finished output with the same request exists.
        threads: dask threads for reading; default all cores.
        source: the manifest's name in error messages.
        aux: auxiliary layers added to every scene (:mod:`pixeldino.auxlayers`); None: none.

    Returns:
        The scene outputs, which of them were reused, and the composites written.

    Raises:
        InputError: a requested scene id is not in the manifest, or a scene fails (see :func:`fetch_scene`).
    """
    params = params or FetchParams()
    outputs: list[Path] = []
    reused: list[Path] = []
    per_tile: dict[str, list[Path]] = {}
    for scene in select_scenes(manifest, scene_ids, source=source):
        out, fetched = _fetch_scene(
            scene,
            bands,
            Path(out_dir) / f"{scene['id']}.tif",
            params,
            aoi=aoi,
            provider=None,
            overwrite=overwrite,
            threads=threads,
            aux=aux,
        )
        outputs.append(out)
        if not fetched:
            reused.append(out)
        per_tile.setdefault(str(scene["tile"]), []).append(out)
    composites: list[Path] = []
    if params.composite != "none" and composites_dir is not None:
        for tile, paths in sorted(per_tile.items()):
            composites.append(composite_scenes(paths, Path(composites_dir) / f"{tile}.tif", method=params.composite))
    return FetchReport(scenes=outputs, reused=reused, composites=composites)


def fetch_scene(
    scene: Mapping[str, Any],
    bands: Sequence[str],
    out_path: str | os.PathLike[str],
    params: FetchParams | None = None,
    *,
    aoi: AoiValue = None,
    provider: str | Provider | None = None,
    overwrite: bool = True,
    threads: int | None = None,
    aux: AuxParams | None = None,
) -> Path:
    """Read a scene's band files and write them as one multi-band uint16 COG on a common grid.

    Args:
        scene: one entry of a scene manifest (``id``, ``assets`` {band: href}, ``crs``, ``tile``, ``datetime``,
            ``processing_baseline``, ``mask_asset``...).
        bands: bands to stack, in output order (canonical or provider names).
        out_path: the COG to write. Next to it: the JSON sidecar ``<stem>.json`` (provenance) and, when the
            scene has an SCL asset and ``params.quality_mask`` is True, ``<stem>_mask.tif``.
        params: resolution, harmonisation, quality mask, AOI cut; None: :class:`FetchParams` defaults.
        aoi: the area (vector file, bbox or geometry in EPSG:4326) the output is cut to when
            ``params.clip_to_aoi``: its bounding box, snapped outward to the scene's pixel grid. ``"circumpolar"``
            means no cut.
        provider: provider name or object used to sign hrefs and to get credentials; default: the scene's
            ``provider`` field, else plain reading.
        overwrite: False returns at once when a finished output with the same request exists (resume).
        threads: dask threads for reading; default all cores.
        aux: auxiliary layers (DEM derivatives, spectral indices) appended to the COG as named bands at the end
            (:func:`pixeldino.auxlayers.add_aux_layers`); part of the request, so other settings fetch again.

    Returns:
        The path of the scene COG.

    Raises:
        InputError: a band asset is missing from the scene, a file cannot be read (missing, corrupt, truncated),
            a band's CRS differs from the manifest's ``crs``, or the AOI misses the scene.
    """
    out, _ = _fetch_scene(
        scene,
        bands,
        out_path,
        params or FetchParams(),
        aoi=aoi,
        provider=provider,
        overwrite=overwrite,
        threads=threads,
        aux=aux,
    )
    return out


def _aoi_near_scene(aoi: AoiValue, scene: Mapping[str, Any], scene_id: str) -> BaseGeometry | None:
    """The part of the AOI near the scene in EPSG:4326 (None: no cut, e.g. the circumpolar domain).

    Raises:
        InputError: the AOI does not overlap the scene.
    """
    aoi_geom = load_aoi(aoi)  # None for the circumpolar domain, which covers whole tiles
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


def _reading_provider(provider: str | Provider | None) -> Provider | None:
    """The provider whose signing and credentials reading needs; None for plain files and URLs."""
    if isinstance(provider, Provider):
        return provider
    preset = next((name for name in PRESETS if name == provider), None)
    return resolve_provider(StacParams(provider=preset)) if preset else None


def _fetch_scene(
    scene: Mapping[str, Any],
    bands: Sequence[str],
    out_path: str | os.PathLike[str],
    params: FetchParams,
    *,
    aoi: AoiValue,
    provider: str | Provider | None,
    overwrite: bool,
    threads: int | None,
    aux: AuxParams | None = None,
) -> tuple[Path, bool]:
    """:func:`fetch_scene`, also saying whether the scene was fetched (False: a finished output was reused)."""
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
    aoi_geom = _aoi_near_scene(aoi, scene, scene_id) if params.clip_to_aoi else None
    offset, offset_reason = harmonization_offset(scene, params.harmonize)
    mask_href = scene.get("mask_asset") if params.quality_mask else None
    resolution = float(params.resolution)
    sources = {b: str(assets[b]) for b in band_list}
    if mask_href:
        sources[SCL_BAND] = str(mask_href)
    signature = request_signature(
        band_list,
        list(aoi_geom.bounds) if aoi_geom is not None else None,
        resolution,
        offset,
        params.quality_mask,
        sources,
        aux_request(aux),
    )
    if not overwrite and is_finished(out, scene_id, signature):
        log.info("%s is complete (same request, files unchanged since); not fetched again", out)
        return out, False
    with writing(out):
        _write_scene(
            scene, band_list, out, params, aoi_geom, offset, offset_reason, mask_href, provider, signature, threads
        )
        add_aux_layers(out, aux, remove_on_failure=True)
    return out, True


def _write_scene(
    scene: Mapping[str, Any],
    band_list: list[str],
    out: Path,
    params: FetchParams,
    aoi_geom: BaseGeometry | None,
    offset: int,
    offset_reason: str,
    mask_href: str | None,
    provider: str | Provider | None,
    signature: Mapping[str, Any],
    threads: int | None,
) -> None:
    """Read the scene's bands and write its COG, mask and sidecar (the sidecar last); nothing is left on failure."""
    scene_id = str(scene.get("id", "?"))
    assets: Mapping[str, str] = scene.get("assets") or {}
    resolution = float(params.resolution)
    prov = _reading_provider(provider if provider is not None else scene.get("provider"))
    # READ_OPTIONS: decode in the reading thread, so that a band that fails to decode is an error, not zeros
    gdal_options = {**GDAL_READ_OPTIONS, **(prov.gdal_options() if prov else {}), **READ_OPTIONS}
    sign = prov.sign_href if prov else (lambda href: href)
    read_hrefs = {b: absolute_href(sign(str(assets[b]))) for b in band_list}
    if mask_href:
        read_hrefs[SCL_BAND] = absolute_href(sign(str(mask_href)))
    expected_crs = CRS.from_user_input(scene["crs"]) if scene.get("crs") else None
    headers = _checked_headers(read_hrefs, scene_id, expected_crs, gdal_options)
    crs = expected_crs or headers[band_list[0]]["crs"]
    band_headers = {b: headers[b] for b in band_list}
    transform, width, height = target_grid(band_headers, crs, resolution, aoi_geom, scene_id)

    out.parent.mkdir(parents=True, exist_ok=True)
    mask_out = mask_path_for(out)
    small = width < 512 or height < 512
    with ExitStack() as stack:
        # odc-geo still multiplies affines with `*`, which affine deprecates; not ours to fix, and noisy
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        data = load_scene(scene, read_hrefs, headers, crs, transform, width, height, gdal_options, threads)
        tmpdir = stack.enter_context(temporary(out, directory=True))
        # intermediate tiled GeoTIFFs live in tmpdir and are deleted on exit; only the COG copies become outputs
        profile = {**TILED_GTIFF_PROFILE, "width": width, "height": height, "crs": crs, "transform": transform}
        if small:
            profile.update(blockxsize=256, blockysize=256)
        stats = write_blocks(data, band_list, read_hrefs, scene_id, tmpdir, profile, offset, bool(mask_href))
        tags = {
            "scene_id": scene_id,
            "tile": str(scene.get("tile") or ""),
            "datetime": str(scene.get("datetime") or ""),
            "processing_baseline": str(scene.get("processing_baseline") or ""),
            "bands": ",".join(band_list),
            "resampling": RESAMPLING.name,
            "offset_applied": str(offset),
            "pixeldino_version": __version__,
        }
        with rasterio.open(tmpdir / "stack.tif", "r+") as dst:
            dst.update_tags(**tags)
            for i, band in enumerate(band_list, start=1):
                dst.set_band_description(i, band)
        blocksize = 256 if small else 512
        written: list[Path] = []
        # the sidecar of an earlier fetch must never describe the files about to replace its own
        out.with_suffix(".json").unlink(missing_ok=True)
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
            sidecar = scene_sidecar(
                scene,
                prov,
                band_list,
                crs,
                transform,
                width,
                height,
                resolution,
                aoi_geom,
                offset,
                offset_reason,
                mask_href,
                mask_out,
                stats,
                signature,
                written,
            )
            write_json(out.with_suffix(".json"), sidecar)
        except BaseException:
            # a COG without its provenance would look complete to the next stage; remove what was written
            for path in written:
                path.unlink(missing_ok=True)
            raise
    if sidecar["skipped"]:
        log.warning(
            "scene %s: %s; written but marked skipped in %s",
            scene_id,
            sidecar["skip_reason"],
            out.with_suffix(".json").name,
        )


def _checked_headers(
    hrefs: Mapping[str, str], scene_id: str, expected_crs: CRS | None, gdal_options: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The headers of every file to read, checked for a CRS (the manifest's, when it states one) and a band.

    Raises:
        InputError: a file cannot be read, has no CRS or band, or is in another CRS than the manifest says.
    """
    with rasterio.Env(**gdal_options):
        headers = {b: read_header(href, scene_id, b) for b, href in hrefs.items()}
    for band, h in headers.items():
        problem = georeference_problem(h["crs"], h["transform"])
        if problem:
            raise InputError(
                f"band {band} of scene {scene_id} at {hrefs[band]} {problem}; the file is damaged: re-download it"
            )
        if h["count"] < 1:
            raise InputError(f"band {band} of scene {scene_id} at {hrefs[band]} has no raster band")
        if expected_crs is not None and h["crs"] != expected_crs:
            raise InputError(
                f"band {band} of scene {scene_id} is in {h['crs'].to_string()} but the manifest says "
                f"{expected_crs.to_string()}; re-run the search (the manifest is stale) or fix the catalog"
            )
    return headers
