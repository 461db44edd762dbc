"""Auxiliary layers (config section ``aux``, :class:`AuxParams`): DEM derivatives and spectral indices as scene bands.

With ``aux`` set, ``pixeldino fetch`` ends every scene by :func:`add_aux_layers`: the DEM (a local raster, or the
items of a STAC collection that overlap the scene, mosaicked; :mod:`pixeldino.dem`) is warped onto the scene's 10 m
grid with bilinear resampling, the terrain layers are derived from it (:mod:`pixeldino.terrain`: slope, relative
elevation, aspect, curvature) and the spectral indices from the bands (NDVI, NDWI); each becomes an extra band of
the scene COG, named by its band description and stored with the fixed uint16 encoding of
:data:`pixeldino.terrain.ENCODINGS` (GDAL scale/offset set, nodata 0). Chipping, training and prediction select
bands by description, so they carry the layers without further plumbing: a model's input bands are the config
``bands`` followed by the enabled layers (:func:`input_bands`), and ``predict`` refuses a scene that lacks one
(:func:`pixeldino.terrain.missing_band_hint`).

Where a layer has no value it is 0 (no data): outside the DEM, within a pixel of DEM holes for the 3 x 3
derivatives, on flat ground for the aspect, and wherever the scene itself has no data (every Sentinel-2 band 0), so
that a pixel without data stays 0 in every band (:mod:`pixeldino.normalise`'s nodata rule).

Memory is bounded: the scene is rewritten in strips of :data:`STRIP_ROWS` rows, each read with a halo of the
relative elevation's radius (+2 px for the 3 x 3 derivatives) from a warped view of the DEM, so a 10980 x 10980 px
tile never sits in memory whole.

Provenance: the scene's JSON sidecar gets an ``aux`` record (layers, their band numbers and encoding, the DEM source:
file path or STAC items, its coverage) and its completion record is updated, with the aux settings in its request
(:func:`aux_request`), so that a fetch with other aux settings fetches the scene again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pixeldino.bands import canonical_bands
from pixeldino.dem import OpenDem, open_dem, read_dem, warped_dem
from pixeldino.errors import ConfigError, InputError
from pixeldino.io import TILED_GTIFF_PROFILE, gtiff_to_cog, read_json, temporary, write_json, writing
from pixeldino.params import as_config, from_config
from pixeldino.providers import PROVIDERS, ProviderName, StacParams, infer_provider
from pixeldino.quality import mask_path_for
from pixeldino.rasters import open_raster, read_raster
from pixeldino.terrain import (
    AUX_LAYERS,
    ENCODINGS,
    INDEX_LAYERS,
    TERRAIN_LAYERS,
    SpectralIndex,
    TerrainLayer,
    index_layers,
    is_aux_layer,
    missing_index_bands,
    terrain_layers,
)

log = logging.getLogger(__name__)

DemSource = Literal["none", "file", "stac"]
#: Rows of the scene processed at once (a multiple of the COG block size, so windowed writes fill whole blocks).
STRIP_ROWS = 1024


@dataclass
class AuxParams:
    """Auxiliary input layers added to every fetched scene as extra named bands: the config section ``aux``.

    Attributes:
        dem: where the elevation model comes from. none: no terrain layers. file: the raster dem_file. stac: the
            items of dem_collection (from dem_provider / dem_catalog) that overlap the scene, mosaicked.
        dem_file: the DEM raster for dem: file (GeoTIFF, VRT, anything GDAL reads; any CRS; heights in metres).
        dem_provider: the STAC provider of the DEM for dem: stac: local (the static catalog dem_catalog),
            earth-search or planetary-computer (both publish cop-dem-glo-30, asset data), custom (the STAC API URL
            in dem_catalog, e.g. PGC's for ArcticDEM mosaics); null infers it from dem_catalog like stac.provider.
        dem_catalog: the static catalog (catalog.json) or STAC API URL of the DEM, for dem_provider local / custom.
        dem_collection: the DEM collection: cop-dem-glo-30 (Copernicus DEM GLO-30 on Earth Search and Planetary
            Computer), cop-dem-glo-90, an ArcticDEM mosaic collection (10 or 32 m: the 2 m mosaic is needlessly
            fine for a 10 m grid), or a collection of a local catalog.
        dem_asset: the asset key of the elevation raster in the DEM items (data for cop-dem-glo-30; dem for the
            ArcticDEM mosaics of PGC).
        terrain: the terrain layers derived from the DEM (with dem not none): slope (degrees), relative_elevation
            (metres above the mean within relative_radius_m), aspect (degrees from north; the network sees its
            cosine), curvature (ArcGIS, 1/100 m). Encodings: pixeldino/terrain.py.
        relative_radius_m: radius in metres of the disk whose mean elevation relative_elevation is measured
            against (slumps are tens to hundreds of metres across).
        indices: spectral indices computed from the bands: ndvi ((B08 - B04) / (B08 + B04)), ndwi (McFeeters,
            (B03 - B08) / (B03 + B08)); the bands they need must be in 'bands'.
    """

    dem: DemSource = "none"
    dem_file: str | None = None
    dem_provider: ProviderName | None = None
    dem_catalog: str | None = None
    dem_collection: str = "cop-dem-glo-30"
    dem_asset: str = "data"
    terrain: list[TerrainLayer] = field(default_factory=lambda: ["slope", "relative_elevation"])
    relative_radius_m: float = field(default=300.0, metadata={"minimum": 20, "maximum": 5000})
    indices: list[SpectralIndex] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dem not in get_args(DemSource):
            raise ConfigError(f"aux.dem {self.dem!r} is not one of {', '.join(get_args(DemSource))}")
        for name, values, allowed in (
            ("terrain", self.terrain, TERRAIN_LAYERS),
            ("indices", self.indices, INDEX_LAYERS),
        ):
            unknown = [v for v in values if v not in allowed]
            if unknown or len(set(values)) != len(values):
                raise ConfigError(
                    f"aux.{name} {list(values)}: each of {', '.join(allowed)} at most once"
                    + (f" ({', '.join(map(str, unknown))} is not one)" if unknown else "")
                )
        if not 20 <= self.relative_radius_m <= 5000:
            raise ConfigError(f"aux.relative_radius_m {self.relative_radius_m} must be between 20 and 5000 metres")
        if self.dem == "file" and not self.dem_file:
            raise ConfigError("aux.dem 'file' needs aux.dem_file: the path of a DEM raster (GeoTIFF, VRT)")
        if self.dem_provider is not None and self.dem_provider not in PROVIDERS:
            raise ConfigError(f"aux.dem_provider {self.dem_provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.dem_file is not None:
            self.dem_file = os.fspath(self.dem_file)
        if self.dem_catalog is not None:
            self.dem_catalog = os.fspath(self.dem_catalog)

    @property
    def terrain_layers(self) -> list[str]:
        """The terrain layers to derive (none without a DEM), in band order."""
        return [n for n in TERRAIN_LAYERS if n in self.terrain] if self.dem != "none" else []

    @property
    def layers(self) -> list[str]:
        """Every layer added to a scene, in band order (:data:`pixeldino.terrain.AUX_LAYERS`)."""
        wanted = set(self.terrain_layers) | set(self.indices)
        return [n for n in AUX_LAYERS if n in wanted]

    def stac(self) -> StacParams:
        """The DEM's STAC source as :class:`pixeldino.providers.StacParams`."""
        return StacParams(
            provider=self.dem_provider or infer_provider(self.dem_catalog),
            catalog=self.dem_catalog,
            collection=self.dem_collection,
        )


def as_aux_params(aux: AuxParams | Mapping[str, Any] | None) -> AuxParams:
    """An :class:`AuxParams` from itself, a config section (``config["aux"]``) or None (no layers)."""
    if isinstance(aux, AuxParams):
        return aux
    return from_config(AuxParams, aux or {}, source="config aux")


def input_bands(bands: Sequence[str], aux: AuxParams | Mapping[str, Any] | None) -> list[str]:
    """A model's input bands: the Sentinel-2 ``bands`` (canonical ids) followed by the layers ``aux`` enables.

    The one place that decides what chip, train and predict read: the workflow passes it as the chip and train
    rules' band list; the model stores it.

    Raises:
        ConfigError: an unknown band, or a spectral index whose bands are not in ``bands``.
    """
    params = as_aux_params(aux)
    spectral = canonical_bands(list(bands))
    lacking = missing_index_bands(params.indices, spectral)
    if lacking:
        index, missing = lacking
        raise ConfigError(
            f"aux.indices: {index} needs band(s) {', '.join(missing)}, which are not in 'bands' "
            f"({', '.join(spectral)}); add them to 'bands' or drop {index}"
        )
    return spectral + params.layers


def aux_request(aux: AuxParams | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a scene's auxiliary layers depend on, for the fetch's completion record (None: no layers)."""
    params = as_aux_params(aux)
    if not params.layers:
        return None
    request: dict[str, Any] = {"layers": params.layers, "indices": list(params.indices)}
    if params.terrain_layers:
        request["relative_radius_m"] = float(params.relative_radius_m)
        if params.dem == "file":
            request["dem"] = {"source": "file", "path": str(params.dem_file)}
        else:
            stac = params.stac()
            request["dem"] = {
                "source": "stac", "provider": stac.provider, "catalog": stac.catalog,
                "collection": params.dem_collection, "asset": params.dem_asset,
            }  # fmt: skip
    return request


def _spectral_bands(descriptions: Sequence[str | None]) -> list[int]:
    """1-based indexes of the bands that are not auxiliary layers (a scene rewritten keeps only these)."""
    return [i for i, d in enumerate(descriptions, start=1) if not (d and is_aux_layer(d))]


def _read_sidecar(sidecar: Path) -> dict[str, Any] | None:
    """The scene's sidecar, or None where it is missing or not a JSON object (nothing to update)."""
    if not sidecar.exists():
        return None
    try:
        meta = read_json(sidecar)
    except InputError:
        return None
    return meta if isinstance(meta, dict) else None


def add_aux_layers(
    scene_path: str | os.PathLike[str],
    params: AuxParams | Mapping[str, Any] | None,
    *,
    remove_on_failure: bool = False,
) -> dict[str, Any] | None:
    """Rewrite a fetched scene COG with the auxiliary layers as extra named bands; record them in its sidecar.

    Layers already in the scene are replaced (the Sentinel-2 bands are kept), so calling it again with other
    settings is safe. The COG is replaced atomically; the sidecar (``<scene>.json``, if any) is removed while the
    scene is rewritten and written again with an ``aux`` record and an updated completion record, so an interrupted
    rewrite leaves a scene that the next fetch does again.

    Args:
        scene_path: the scene COG (bands named in the descriptions, uint16, nodata 0).
        params: the ``aux`` settings; nothing happens when they enable no layer.
        remove_on_failure: on failure remove the COG, its quality mask and sidecar (the fetch's rule: a failed
            scene leaves nothing); otherwise the scene is left as it was.

    Returns:
        The sidecar's ``aux`` record, or None when no layer is enabled.

    Raises:
        InputError: the scene or the DEM is unreadable, the DEM does not cover the scene, or a spectral index's
            bands are missing from the scene.
        ConfigError: an invalid DEM provider setting.
    """
    aux = as_aux_params(params)
    if not aux.layers:
        return None
    out = Path(scene_path)
    sidecar_path = out.with_suffix(".json")
    meta = _read_sidecar(sidecar_path)
    try:
        with writing(out):
            # a sidecar must never vouch for a scene being rewritten (is_finished trusts it): gone until done
            sidecar_path.unlink(missing_ok=True)
            record = _rewrite(out, aux, skipped=bool(meta and meta.get("skipped")))
            if meta is not None:
                write_json(sidecar_path, _updated_sidecar(meta, out, aux, record))
    except BaseException:
        if remove_on_failure:
            for path in (out, mask_path_for(out), sidecar_path):
                path.unlink(missing_ok=True)
        elif meta is not None and not sidecar_path.exists():
            write_json(sidecar_path, meta)  # the COG is replaced atomically: it is still the one meta describes
        raise
    return record


def _updated_sidecar(meta: dict[str, Any], out: Path, aux: AuxParams, record: dict[str, Any]) -> dict[str, Any]:
    """The sidecar with the ``aux`` record and a completion record that vouches for the rewritten COG."""
    from pixeldino.sidecar import completion_record

    updated = {**meta, "aux": record}
    completed = meta.get("completed")
    if isinstance(completed, dict) and isinstance(completed.get("request"), dict):
        request = {k: v for k, v in completed["request"].items() if k != "aux"}
        request["aux"] = aux_request(aux)
        files = [out] + [out.parent / name for name in (completed.get("files") or {}) if name != out.name]
        updated["completed"] = completion_record(request, [f for f in files if f.exists()])
    return updated


def _rewrite(out: Path, aux: AuxParams, *, skipped: bool) -> dict[str, Any]:
    """Write the scene again with its Sentinel-2 bands and the auxiliary layers; returns the ``aux`` record."""
    layers = aux.layers
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open_raster(out, "scene", "fetch it again (pixeldino fetch)"))
        keep = _spectral_bands(src.descriptions)
        names = [str(src.descriptions[i - 1] or f"band{i}") for i in keep]
        by_name = {n: i for n, i in zip(canonical_names(names), keep)}
        lacking = missing_index_bands(aux.indices, by_name)
        if lacking:
            index, missing = lacking
            raise InputError(
                f"{out}: aux.indices {index} needs band(s) {', '.join(missing)}, which the scene lacks "
                f"(it has {', '.join(names)}); add them to 'bands' and fetch again"
            )
        res_x, res_y = abs(src.transform.a), abs(src.transform.e)
        radius_px = aux.relative_radius_m / res_x
        halo = math.ceil(radius_px) + 2 if aux.terrain_layers else 0
        padded = src.transform * Affine.translation(-halo, -halo)
        pw, ph = src.width + 2 * halo, src.height + 2 * halo
        tmpdir = stack.enter_context(temporary(out, directory=True))
        dem: OpenDem | None = None
        if aux.terrain_layers and not skipped:
            bounds = rasterio.transform.array_bounds(ph, pw, padded)
            dem = stack.enter_context(
                open_dem(aux, src.crs, (bounds[0], bounds[1], bounds[2], bounds[3]), out.stem, tmpdir)
            )
            warped = [stack.enter_context(warped_dem(ds, src.crs, padded, pw, ph)) for ds in dem.datasets]
        block = 256 if min(src.width, src.height) < 512 else 512  # as the fetch writes scenes
        profile = {
            **TILED_GTIFF_PROFILE, "width": src.width, "height": src.height, "count": len(keep) + len(layers),
            "dtype": "uint16", "nodata": 0, "crs": src.crs, "transform": src.transform,
            "blockxsize": block, "blockysize": block,
        }  # fmt: skip
        strip = max(block, STRIP_ROWS // block * block)
        n_valid = n_covered = 0
        with rasterio.open(tmpdir / "scene.tif", "w", **profile) as dst:
            for r0 in range(0, src.height, strip):
                h = min(strip, src.height - r0)
                window = Window(0, r0, src.width, h)
                bands = read_raster(src, keep, window=window)
                valid = (bands != 0).any(axis=0)
                values: dict[str, np.ndarray] = {}
                if dem is not None and valid.any():
                    z = read_dem(warped, Window(0, r0, pw, h + 2 * halo))
                    n_valid += int(valid.sum())
                    n_covered += int((valid & np.isfinite(z[halo : halo + h, halo : halo + src.width])).sum())
                    computed = terrain_layers(z, res_x, res_y, aux.terrain_layers, radius_px)
                    values.update({k: v[halo : halo + h, halo : halo + src.width] for k, v in computed.items()})
                if aux.indices and valid.any():
                    spectral = {n: bands[keep.index(i)] for n, i in by_name.items() if n in {"B03", "B04", "B08"}}
                    values.update(index_layers(spectral, aux.indices))
                dst.write(bands, indexes=list(range(1, len(keep) + 1)), window=window)
                for j, name in enumerate(layers, start=len(keep) + 1):
                    dn = ENCODINGS[name].encode(values[name]) if name in values else np.zeros((h, src.width), np.uint16)
                    dst.write(np.where(valid, dn, 0).astype(np.uint16), j, window=window)
            dst.descriptions = (*names, *layers)
            dst.scales = (*(src.scales[i - 1] for i in keep), *(ENCODINGS[n].scale for n in layers))
            dst.offsets = (*(src.offsets[i - 1] for i in keep), *(ENCODINGS[n].offset for n in layers))
            dst.units = (*(src.units[i - 1] or "" for i in keep), *(ENCODINGS[n].unit for n in layers))
            dst.update_tags(**{**src.tags(), "aux_layers": ",".join(layers)})
        cog_block = 256 if block < 512 else 512
        if dem is not None and n_valid and not n_covered:
            where = dem.record.get("path") or dem.record.get("collection")
            raise InputError(
                f"aux: the DEM ({where}) has no elevation over scene {out.stem}; use a DEM that covers it "
                "(aux.dem_file, aux.dem_collection) or set aux.dem: none"
            )
        coverage = n_covered / n_valid if n_valid else None
        if coverage is not None and coverage < 0.99:
            log.warning("scene %s: the DEM covers %.1f %% of its valid pixels", out.stem, 100 * coverage)
        gtiff_to_cog(tmpdir / "scene.tif", out, blocksize=cog_block)
    return {
        "layers": layers,
        "band_indexes": list(range(len(keep) + 1, len(keep) + len(layers) + 1)),
        "encoding": {n: ENCODINGS[n].describe() for n in layers},
        "dem": dem.record if dem is not None else None,
        "dem_coverage": coverage,
        "dem_resampling": "bilinear" if aux.terrain_layers else None,
        "relative_radius_m": float(aux.relative_radius_m) if "relative_elevation" in layers else None,
        "params": as_config(aux),
        "skipped": skipped,
    }


def canonical_names(names: Sequence[str]) -> list[str]:
    """Band descriptions as canonical Sentinel-2 ids where they are one (``red`` -> ``B04``), else as written."""
    from pixeldino.bands import canonical_band

    out = []
    for n in names:
        try:
            out.append(canonical_band(n))
        except ConfigError:
            out.append(n)
    return out


def dem_on_grid(
    params: AuxParams | Mapping[str, Any],
    crs: CRS | str,
    transform: Affine,
    width: int,
    height: int,
    *,
    name: str = "grid",
) -> tuple[np.ndarray, dict[str, Any]]:
    """The DEM of ``params`` on a grid, as :func:`add_aux_layers` sees it (bilinear), for small grids and checks.

    Returns:
        ``(elevation, provenance)``: float64 metres, NaN where the DEM has no value; the DEM source record.

    Raises:
        ConfigError: ``params.dem`` is ``none``.
        InputError: see :func:`add_aux_layers`.
    """
    import tempfile

    aux = as_aux_params(params)
    if aux.dem == "none":
        raise ConfigError("aux.dem is none: there is no DEM to read; set aux.dem to file or stac")
    grid_crs = CRS.from_user_input(crs)
    left, bottom, right, top = rasterio.transform.array_bounds(height, width, transform)
    with (
        tempfile.TemporaryDirectory(prefix="pixeldino-dem-") as tmp,
        open_dem(aux, grid_crs, (left, bottom, right, top), name, Path(tmp)) as dem,
        contextlib.ExitStack() as stack,
    ):
        warped = [stack.enter_context(warped_dem(ds, grid_crs, transform, width, height)) for ds in dem.datasets]
        return read_dem(warped, Window(0, 0, width, height)), dem.record
