"""The terrain of a synthetic scene (:mod:`pixeldino.synthetic`) and the DEM product of it.

Every scene has a DEM (``SyntheticScene.dem``, written by :func:`pixeldino.synthetic.write_dem`), shaped like a
Copernicus GLO-30 tile: 30 m pixels, about 1 m of noise, heights in metres. Its terrain is the relief whose
hillshade lights the image (hills), plus incised valleys with steep sides and flat lake surfaces (terrain that is
not a slump), plus the slumps: a lowered floor, deepest at a steep headwall scarp on the upslope rim (the rim the
image shades), and a raised runout lobe beyond the downslope edge (outside the label). Only a share of the slumps
(``RegionStyle.dem_slump_share``) is carved, since a DEM is older than the image and slumps keep forming. The DEM
is drawn from its own random stream, so the images are exactly what they were before the DEM existed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage

if TYPE_CHECKING:
    from pixeldino.synthetic import PastedSlump
    from pixeldino.synthetic_regions import RegionStyle

#: Pixel size of the synthetic DEM (as Copernicus GLO-30), metres.
DEM_PIXEL_SIZE = 30.0
#: Elevation of the synthetic landscape's mean surface, metres (any value: only differences matter).
_BASE_ELEVATION_M = 150.0


def _slump_frame(one: np.ndarray, theta: float, margin: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """A window around one slump (``margin`` px beyond it) and, in it, the slump's pixels and the position along
    its downslope axis, -1 at the upslope (headwall) end and 1 at the downslope end (beyond: larger)."""
    rows, cols = np.nonzero(one)
    r0, r1 = max(rows.min() - margin, 0), min(rows.max() + margin + 1, one.shape[0])
    c0, c1 = max(cols.min() - margin, 0), min(cols.max() + margin + 1, one.shape[1])
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    # the same axis as pixeldino.synthetic._paste_slump's: theta counter-clockwise from east, rows grow southwards
    along = (xx - cols.mean()) * np.cos(theta) - (yy - rows.mean()) * np.sin(theta)
    m = one[r0:r1, c0:c1]
    scale = max(float(np.abs(along[m]).max()), 1.0)
    return (slice(r0, r1), slice(c0, c1)), m, along / scale


def _carve_slump(z: np.ndarray, one: np.ndarray, theta: float, depth_m: float) -> None:
    """Carve one slump into the elevation ``z`` (metres), in place: a floor lowered by up to ``depth_m``, deepest
    below a steep headwall on the upslope rim, and a runout lobe of mud beyond the downslope edge."""
    extent = max(np.ptp(np.nonzero(one)[0]), np.ptp(np.nonzero(one)[1])) + 1
    lobe_px = max(2.0, 0.3 * extent)
    window, m, u = _slump_frame(one, theta, margin=int(np.ceil(lobe_px)) + 2)
    inside = ndimage.distance_transform_edt(m)
    outside = ndimage.distance_transform_edt(~m)
    # the floor: deepest at the headwall, shallowing towards the mouth; a scarp one pixel wide on the upslope rim,
    # gentler sides elsewhere
    profile = np.clip(0.65 - 0.35 * u, 0.3, 1.0)
    sharpness = np.where(u < -0.25, np.clip(inside / 1.0, 0.0, 1.0), np.clip(inside / 3.0, 0.0, 1.0))
    floor = -depth_m * profile * sharpness * m
    # the runout lobe: mud spread beyond the downslope edge, up to a third of the depth high
    lobe = (~m) * (outside <= lobe_px) * np.clip((u - 0.2) / 0.3, 0.0, 1.0) * (1.0 - outside / lobe_px)
    z[window] += floor + 0.35 * depth_m * np.clip(lobe, 0.0, 1.0)


def _valleys(rng: np.random.Generator, style: RegionStyle, shape: tuple[int, int], pixel_size: float) -> np.ndarray:
    """Incised, steep-sided valleys (negative metres): meandering paths across the scene with V-shaped sections."""
    h, w = shape
    km2 = (h * pixel_size / 1000.0) * (w * pixel_size / 1000.0)
    z = np.zeros(shape)
    for _ in range(int(rng.poisson(style.valleys_per_km2 * km2))):
        # enter at a random point of the western or northern edge and meander across
        if rng.random() < 0.5:
            y, x, heading = rng.uniform(0, h), 0.0, rng.uniform(-0.6, 0.6)
        else:
            y, x, heading = 0.0, rng.uniform(0, w), -np.pi / 2 + rng.uniform(-0.6, 0.6)
        path = np.zeros(shape, dtype=bool)
        for _step in range(4 * (h + w)):
            if not (0 <= y < h and 0 <= x < w):
                break
            path[int(y), int(x)] = True
            heading += rng.normal(0.0, 0.08)
            x, y = x + 0.5 * np.cos(heading), y - 0.5 * np.sin(heading)
        if not path.any():
            continue
        distance = ndimage.distance_transform_edt(~path)
        half_width = rng.uniform(3.0, 6.0)
        depth = style.valley_depth_m * rng.uniform(0.6, 1.4)
        z = np.minimum(z, -depth * np.clip(1.0 - distance / half_width, 0.0, 1.0) ** 0.8)
    return z


def scene_terrain(
    rng: np.random.Generator,
    style: RegionStyle,
    relief: np.ndarray,
    lakes: np.ndarray,
    mask: np.ndarray,
    slumps: list[PastedSlump],
    transform: Affine,
) -> tuple[np.ndarray, np.ndarray, Affine]:
    """The scene's terrain on its 10 m grid and the DEM product of it (30 m, noisy).

    Args:
        rng: the terrain's own random stream (the image's stream is left alone).
        style: the region's look.
        relief: the relief field (in pixels) whose hillshade lights the image.
        lakes: the scene's lake pixels.
        mask: the slump mask (only its shape is used).
        slumps: the pasted slumps; each is marked as held by the DEM or not (``PastedSlump.in_dem``).
        transform: the scene's grid.

    Returns:
        ``(elevation, dem, dem transform)``: float32 metres on the scene grid and on the 30 m DEM grid.
    """
    shape = mask.shape
    pixel_size = abs(transform.a)
    # hills: the relief whose hillshade lights the image, so shading and terrain agree
    z = _BASE_ELEVATION_M + relief * style.dem_relief_m + _valleys(rng, style, shape, pixel_size)
    # lakes: flat water surfaces a metre below their lowest shore
    labelled, n_lakes = ndimage.label(lakes)
    for k in range(1, n_lakes + 1):
        lake = labelled == k
        z[lake] = z[lake].min() - 1.0
    for slump in slumps:
        slump.in_dem = bool(rng.random() < style.dem_slump_share)
        depth = style.slump_depth_m * rng.uniform(0.6, 1.4)
        if slump.in_dem:
            one = rasterize([(slump.polygon, 1)], out_shape=shape, transform=transform, fill=0, dtype="uint8")
            _carve_slump(z, one.astype(bool), np.radians(slump.downslope_deg), depth)
    # the DEM product: 3 x 3 block means (30 m pixels, edges replicated to whole blocks) plus noise
    f = int(round(DEM_PIXEL_SIZE / pixel_size))
    ph, pw = -(-shape[0] // f) * f, -(-shape[1] // f) * f
    padded = np.pad(z, ((0, ph - shape[0]), (0, pw - shape[1])), mode="edge")
    dem = padded.reshape(ph // f, f, pw // f, f).mean(axis=(1, 3))
    dem = dem + rng.normal(0.0, style.dem_noise_m, dem.shape)
    dem_transform = Affine(DEM_PIXEL_SIZE, 0.0, transform.c, 0.0, -DEM_PIXEL_SIZE, transform.f)
    return z.astype(np.float32), dem.astype(np.float32), dem_transform
