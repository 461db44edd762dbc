"""Auxiliary layers: terrain derivatives of a DEM, spectral indices, and how each is stored in a scene's uint16 COG.

The auxiliary layers (config section ``aux``, :mod:`pixeldino.auxlayers`) are extra *named bands* of the scene COG,
after the Sentinel-2 bands: ``slope``, ``relative_elevation``, ``aspect``, ``curvature``, ``ndvi``, ``ndwi``.
Chipping, training and prediction select bands by their descriptions, so they carry the layers like any band.

The scene is uint16 with nodata 0, so every layer has ONE fixed linear encoding, :data:`ENCODINGS` (also written
as the band's GDAL scale and offset, so that QGIS and ``gdalinfo`` show physical values)::

    DN = 1 + round((value - low) / step)      value clipped to [low, high]; DN 0 = no data
    value = DN * step + (low - step)          GDAL scale = step, offset = low - step

=====================  ===================================  ===========  =========  ==========  ======================
layer                  value                                low .. high  step       DN          network input
=====================  ===================================  ===========  =========  ==========  ======================
``slope``              degrees                              0 .. 90      0.01       1..9001     slope / 90
``relative_elevation`` m above the mean within a radius     -300 .. 300  0.01 m     1..60001    m / 50, clip [-2, 2]
``aspect``             degrees clockwise from north         0 .. 360     0.01       1..36001    cos(aspect) (northness)
                       (the way the slope faces)                                    (0: flat)
``curvature``          -100 x Laplacian (1/100 m, ArcGIS:   -300 .. 300  0.01       1..60001    value / 10, clip [-3, 3]
                       positive = convex)
``ndvi``               (B08 - B04) / (B08 + B04)            -1 .. 1      0.0001     1..20001    as is
``ndwi``               (B03 - B08) / (B03 + B08) (McFeeters) -1 .. 1     0.0001     1..20001    as is
=====================  ===================================  ===========  =========  ==========  ======================

The "network input" column is the layer's entry of the normalisation spec (:func:`aux_normalisation`, evaluated by
:mod:`pixeldino.normalise`): the decoded value, optionally ``cos`` of it in degrees, minus ``center``, divided by
``divisor``, clipped to ``[clip_low, clip_high]``; DN 0 (no data) enters the network as 0. The spec stored in
``model.json`` holds these numbers themselves, so a model keeps decoding its layers the way it was trained.

Terrain derivatives are computed on the scene's 10 m grid from the DEM warped onto it (bilinear): slope, aspect and
curvature from the 3 x 3 neighbourhood (Horn's 1981 gradient, the one GDAL and ArcGIS use; the curvature is
ArcGIS's ``-2 (D + E) x 100``), relative elevation as the elevation minus the mean elevation of the pixels within a
disk of ``radius`` metres (the valid ones). Everything here is numpy on arrays: :mod:`pixeldino.auxlayers` reads the
DEM, cuts the scene into strips with a halo and writes the bands.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pixeldino.bands import canonical_band
from pixeldino.errors import ConfigError

TerrainLayer = Literal["slope", "relative_elevation", "aspect", "curvature"]
SpectralIndex = Literal["ndvi", "ndwi"]
#: Slope below which a pixel has no aspect (a flat pixel faces nowhere): degrees.
FLAT_SLOPE_DEG = 0.1


@dataclass(frozen=True)
class Encoding:
    """How one auxiliary layer is stored as uint16 and fed to the network.

    Attributes:
        name: the band description (and the layer's name in the config).
        unit: the physical unit of the decoded value.
        low: the smallest value stored (smaller ones are clipped to it); DN 1.
        high: the largest value stored (larger ones are clipped to it).
        step: the value of one DN.
        transform: ``linear``, or ``cos`` (the network sees the cosine of the value in degrees).
        center: subtracted from the (transformed) value before ``divisor``.
        divisor: the network sees ``(value - center) / divisor``...
        clip_low: ...clipped to ``[clip_low, clip_high]``.
        clip_high: see ``clip_low``.
        description: what the layer is, for sidecars and model metadata.
    """

    name: str
    unit: str
    low: float
    high: float
    step: float
    transform: Literal["linear", "cos"]
    center: float
    divisor: float
    clip_low: float
    clip_high: float
    description: str

    @property
    def scale(self) -> float:
        """GDAL scale: ``value = DN * scale + offset``."""
        return self.step

    @property
    def offset(self) -> float:
        """GDAL offset (see :attr:`scale`)."""
        return self.low - self.step

    @property
    def max_dn(self) -> int:
        """The DN of :attr:`high`."""
        return 1 + round((self.high - self.low) / self.step)

    def encode(self, value: np.ndarray) -> np.ndarray:
        """uint16 DNs of physical values; NaN (no data) becomes 0."""
        v = np.asarray(value, dtype=np.float64)
        valid = np.isfinite(v)
        dn = 1.0 + np.rint((np.clip(np.where(valid, v, self.low), self.low, self.high) - self.low) / self.step)
        return np.where(valid, dn, 0.0).astype(np.uint16)

    def decode(self, dn: np.ndarray) -> np.ndarray:
        """Physical values (float64) of DNs; DN 0 (no data) becomes NaN."""
        d = np.asarray(dn, dtype=np.float64)
        return np.where(d == 0, np.nan, d * self.scale + self.offset)

    def normalisation(self) -> dict[str, Any]:
        """This layer's entry of the normalisation spec (see :func:`aux_normalisation`)."""
        return {
            "band": self.name,
            "scale": self.scale,
            "offset": self.offset,
            "transform": self.transform,
            "center": self.center,
            "divisor": self.divisor,
            "clip": [self.clip_low, self.clip_high],
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the encoding (for sidecars and model metadata)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "description": self.description,
            "encoding": f"DN = 1 + round((value - {self.low:g}) / {self.step:g}), clipped; DN 0 = no data",
            "scale": self.scale,
            "offset": self.offset,
            "range": [self.low, self.high],
            "network": self.normalisation(),
        }


#: THE encoding table, in the order the layers are appended to a scene (module docs).
ENCODINGS: dict[str, Encoding] = {
    e.name: e
    for e in (
        Encoding("slope", "degree", 0.0, 90.0, 0.01, "linear", 0.0, 90.0, 0.0, 1.0,
                 "terrain slope (Horn's 3x3 gradient of the DEM on the 10 m scene grid)"),
        Encoding("relative_elevation", "metre", -300.0, 300.0, 0.01, "linear", 0.0, 50.0, -2.0, 2.0,
                 "elevation minus the mean elevation within a disk of aux.relative_radius_m"),
        Encoding("aspect", "degree", 0.0, 360.0, 0.01, "cos", 0.0, 1.0, -1.0, 1.0,
                 "direction the slope faces, clockwise from north; no data where flat (slope < 0.1 degree); "
                 "the network sees its cosine (northness)"),
        Encoding("curvature", "1/100 m", -300.0, 300.0, 0.01, "linear", 0.0, 10.0, -3.0, 3.0,
                 "-100 x Laplacian of the elevation (ArcGIS curvature: positive = convex, negative = concave)"),
        Encoding("ndvi", "1", -1.0, 1.0, 1e-4, "linear", 0.0, 1.0, -1.0, 1.0,
                 "normalised difference vegetation index (B08 - B04) / (B08 + B04)"),
        Encoding("ndwi", "1", -1.0, 1.0, 1e-4, "linear", 0.0, 1.0, -1.0, 1.0,
                 "normalised difference water index (McFeeters 1996) (B03 - B08) / (B03 + B08)"),
    )
}  # fmt: skip
AUX_LAYERS: tuple[str, ...] = tuple(ENCODINGS)
TERRAIN_LAYERS: tuple[str, ...] = ("slope", "relative_elevation", "aspect", "curvature")
INDEX_LAYERS: tuple[str, ...] = ("ndvi", "ndwi")
#: The Sentinel-2 bands each spectral index is computed from: (a, b) for (a - b) / (a + b).
INDEX_BANDS: dict[str, tuple[str, str]] = {"ndvi": ("B08", "B04"), "ndwi": ("B03", "B08")}


def missing_index_bands(indices: Sequence[str], bands: Collection[str]) -> tuple[str, list[str]] | None:
    """The first of ``indices`` whose :data:`INDEX_BANDS` are not all in ``bands``, with the missing ones; None when
    every index can be computed."""
    for index in indices:
        missing = [b for b in INDEX_BANDS[index] if b not in bands]
        if missing:
            return index, missing
    return None


def is_aux_layer(name: str) -> bool:
    """True for the name of an auxiliary layer (``slope``...), case and surrounding spaces ignored."""
    return name.strip().lower() in ENCODINGS


def canonical_input_bands(names: Sequence[str]) -> list[str]:
    """A model's input band list: Sentinel-2 bands (any provider alias, canonicalised) then auxiliary layers.

    Raises:
        ConfigError: an unknown name, a duplicate, or an auxiliary layer before a Sentinel-2 band (the layers are
            appended after the bands in scenes and models, so they must come last).
    """
    out: list[str] = []
    seen_aux = False
    for name in names:
        if is_aux_layer(name):
            out.append(name.strip().lower())
            seen_aux = True
            continue
        band = canonical_band(name)
        if seen_aux:
            raise ConfigError(
                f"band list {list(names)}: the Sentinel-2 band {band} follows an auxiliary layer; list the bands "
                f"first, then the layers ({', '.join(AUX_LAYERS)})"
            )
        out.append(band)
    dupes = sorted({b for b in out if out.count(b) > 1})
    if dupes:
        raise ConfigError(f"band list names {', '.join(dupes)} more than once: {list(names)}")
    return out


def aux_tail(bands: Sequence[str]) -> list[str]:
    """The auxiliary layers of an input band list, which must be its tail (see :func:`canonical_input_bands`).

    Other names are not checked here (a model may have bands of its own).

    Raises:
        ConfigError: an auxiliary layer is followed by a band that is not one.
    """
    flags = [is_aux_layer(b) for b in bands]
    first = flags.index(True) if True in flags else len(flags)
    if not all(flags[first:]):
        raise ConfigError(
            f"band list {list(bands)}: the auxiliary layers ({', '.join(AUX_LAYERS)}) must come after every other band"
        )
    return [b.strip().lower() for b in bands[first:]]


def missing_band_hint(bands: Sequence[str], default: str) -> str:
    """The fix to name when a scene lacks some of ``bands``: ``default``, plus how auxiliary layers are made."""
    layers = [b for b in bands if is_aux_layer(b)]
    if not layers:
        return default
    return (
        f"{default}; the auxiliary layers ({', '.join(layers)}) are added by the fetch: set aux: in the config "
        "(dem, terrain, indices; pixeldino fetch --aux-dem ...) and fetch the scene again"
    )


def aux_normalisation(bands: Sequence[str]) -> list[dict[str, Any]]:
    """The ``aux`` entries of the normalisation spec of a model with these input bands (one per layer, in order)."""
    return [ENCODINGS[b].normalisation() for b in aux_tail(bands)]


def aux_metadata(bands: Sequence[str]) -> list[dict[str, Any]]:
    """The ``auxiliary_layers`` record of a model's metadata: each layer's unit, encoding and network scaling."""
    return [ENCODINGS[b].describe() for b in aux_tail(bands)]


# ---------------------------------------------------------------------------------------------------- terrain
def fill_nodata(z: np.ndarray) -> np.ndarray:
    """``z`` with every NaN replaced by its nearest valid value (a copy; all-NaN stays NaN).

    The 3 x 3 derivatives then see edge-replicated elevations beside a hole instead of spreading it: a pixel next
    to no data keeps a (one-sided) slope.
    """
    from scipy import ndimage

    invalid = ~np.isfinite(z)
    if not invalid.any() or invalid.all():
        return np.array(z, dtype=np.float64)
    _, (rows, cols) = ndimage.distance_transform_edt(invalid, return_distances=True, return_indices=True)
    return np.asarray(z, dtype=np.float64)[rows, cols]


def _neighbours(z: np.ndarray) -> dict[str, np.ndarray]:
    """The 3 x 3 neighbours of every interior pixel, named as in Horn (1981): a b c / d e f / g h i."""
    return {
        "a": z[:-2, :-2], "b": z[:-2, 1:-1], "c": z[:-2, 2:],
        "d": z[1:-1, :-2], "e": z[1:-1, 1:-1], "f": z[1:-1, 2:],
        "g": z[2:, :-2], "h": z[2:, 1:-1], "i": z[2:, 2:],
    }  # fmt: skip


def gradient(z: np.ndarray, res_x: float, res_y: float) -> tuple[np.ndarray, np.ndarray]:
    """Horn's (1981) gradient ``(dz/dx east, dz/dy north)`` of a north-up grid, for its interior pixels.

    Args:
        z: elevations (m), rows southwards; no NaN (see :func:`fill_nodata`).
        res_x: pixel width (m).
        res_y: pixel height (m, positive).

    Returns:
        Two arrays of shape ``(H - 2, W - 2)``.
    """
    n = _neighbours(z)
    dzdx = ((n["c"] + 2 * n["f"] + n["i"]) - (n["a"] + 2 * n["d"] + n["g"])) / (8.0 * res_x)
    # rows grow southwards: the northern row (a b c) minus the southern one (g h i) is the rise to the north
    dzdy = ((n["a"] + 2 * n["b"] + n["c"]) - (n["g"] + 2 * n["h"] + n["i"])) / (8.0 * res_y)
    return dzdx, dzdy


def slope_deg(dzdx: np.ndarray, dzdy: np.ndarray) -> np.ndarray:
    """Slope in degrees from the gradient."""
    return np.degrees(np.arctan(np.hypot(dzdx, dzdy)))


def aspect_deg(dzdx: np.ndarray, dzdy: np.ndarray) -> np.ndarray:
    """The direction the slope faces (downslope), degrees clockwise from north in [0, 360); NaN where flat."""
    aspect = np.degrees(np.arctan2(-dzdx, -dzdy)) % 360.0
    return np.where(slope_deg(dzdx, dzdy) < FLAT_SLOPE_DEG, np.nan, aspect)


def curvature(z: np.ndarray, res_x: float, res_y: float) -> np.ndarray:
    """ArcGIS curvature ``-100 x Laplacian`` (1/100 m; positive = convex) of the interior pixels."""
    n = _neighbours(z)
    laplacian = (n["d"] + n["f"] - 2 * n["e"]) / res_x**2 + (n["b"] + n["h"] - 2 * n["e"]) / res_y**2
    return -100.0 * laplacian


def disk(radius_px: float) -> np.ndarray:
    """A disk kernel (1 inside, 0 outside) of the given radius in pixels; at least the centre pixel."""
    r = max(int(math.floor(radius_px)), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2 <= radius_px**2 + 1e-9).astype(np.float64)


def relative_elevation(z: np.ndarray, radius_px: float, min_share: float = 0.25) -> np.ndarray:
    """Elevation minus the mean of the valid elevations within a disk of ``radius_px`` pixels.

    Args:
        z: elevations (m) with NaN for no data.
        radius_px: the disk's radius in pixels.
        min_share: pixels whose disk holds fewer valid pixels than this share of its area are no data (NaN).

    Returns:
        An array of ``z``'s shape; the disk is cut by the array's edges (callers pass a halo of ``radius_px``).
    """
    from scipy.signal import fftconvolve

    valid = np.isfinite(z)
    out = np.full(z.shape, np.nan)
    if not valid.any():
        return out
    kernel = disk(radius_px)
    # subtract a reference first: FFT round-off grows with the magnitude of the values (elevations of 1000s of m)
    reference = float(np.median(z[valid]))
    zz = np.where(valid, z - reference, 0.0)
    total = fftconvolve(zz, kernel, mode="same")
    count = fftconvolve(valid.astype(np.float64), kernel, mode="same")
    enough = valid & (count >= min_share * kernel.sum())
    out[enough] = zz[enough] - total[enough] / count[enough]
    return out


def terrain_layers(
    z: np.ndarray, res_x: float, res_y: float, layers: Sequence[str], radius_px: float
) -> dict[str, np.ndarray]:
    """The terrain layers of a DEM window, each of ``z``'s shape (NaN where the DEM has no data).

    The 3 x 3 derivatives of the outermost rows and columns are NaN: callers pass a halo (:mod:`pixeldino.auxlayers`
    reads one of ``radius_px + 2`` pixels).

    Args:
        z: elevations (m) on the scene grid, NaN for no data.
        res_x: pixel width (m).
        res_y: pixel height (m).
        layers: which of :data:`TERRAIN_LAYERS`.
        radius_px: the relative elevation's radius in pixels.
    """
    valid = np.isfinite(z)
    out: dict[str, np.ndarray] = {}
    needs_gradient = {"slope", "aspect", "curvature"} & set(layers)
    if needs_gradient:
        filled = fill_nodata(z)

        def full(interior: np.ndarray) -> np.ndarray:
            a = np.full(z.shape, np.nan)
            a[1:-1, 1:-1] = interior
            return np.where(valid, a, np.nan)

        if {"slope", "aspect"} & set(layers):
            dzdx, dzdy = gradient(filled, res_x, res_y)
            if "slope" in layers:
                out["slope"] = full(slope_deg(dzdx, dzdy))
            if "aspect" in layers:
                out["aspect"] = full(aspect_deg(dzdx, dzdy))
        if "curvature" in layers:
            out["curvature"] = full(curvature(filled, res_x, res_y))
    if "relative_elevation" in layers:
        out["relative_elevation"] = relative_elevation(z, radius_px)
    return out


def spectral_index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` of two bands' DNs; NaN where either is 0 (no data) or the sum is not positive."""
    fa, fb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    total = fa + fb
    ok = (fa > 0) & (fb > 0) & (total > 0)
    return np.where(ok, (fa - fb) / np.where(ok, total, 1.0), np.nan)


def index_layers(bands: Mapping[str, np.ndarray], indices: Sequence[str]) -> dict[str, np.ndarray]:
    """The spectral indices (``ndvi``, ``ndwi``) from the Sentinel-2 bands by canonical id."""
    return {name: spectral_index(bands[INDEX_BANDS[name][0]], bands[INDEX_BANDS[name][1]]) for name in indices}
