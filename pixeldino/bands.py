"""The Sentinel-2 MSI band table, and name mapping across STAC providers.

Canonical names are the ESA band ids (``B02``...). Providers name assets differently: Earth Search uses common
names (``blue``, ``rededge1``), Planetary Computer the ids (``B02``), Copernicus Data Space ids with a resolution
(``B02_10m``). :func:`canonical_band` maps any of these to the canonical id, and :func:`band_indexes` finds
requested bands in a raster by its band descriptions (``pixeldino fetch`` names each band by its id).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from pixeldino.errors import ConfigError, InputError


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 band: canonical id, STAC common name, Earth Search asset key, native resolution (m)."""

    name: str
    common_name: str
    earth_search_key: str
    resolution: int
    center_wavelength_um: float


S2_BANDS: dict[str, Band] = {
    b.name: b
    for b in [
        Band("B01", "coastal", "coastal", 60, 0.443),
        Band("B02", "blue", "blue", 10, 0.490),
        Band("B03", "green", "green", 10, 0.560),
        Band("B04", "red", "red", 10, 0.665),
        Band("B05", "rededge", "rededge1", 20, 0.705),
        Band("B06", "rededge", "rededge2", 20, 0.740),
        Band("B07", "rededge", "rededge3", 20, 0.783),
        Band("B08", "nir", "nir", 10, 0.842),
        Band("B8A", "nir08", "nir08", 20, 0.865),
        Band("B09", "nir09", "nir09", 60, 0.945),
        Band("B10", "cirrus", "cirrus", 60, 1.375),
        Band("B11", "swir16", "swir16", 20, 1.610),
        Band("B12", "swir22", "swir22", 20, 2.190),
    ]
}

_ALIASES: dict[str, str] = {}
for _band in S2_BANDS.values():
    for _alias in {_band.name, _band.earth_search_key, f"{_band.name}_{_band.resolution}m"}:
        _ALIASES[_alias.lower()] = _band.name
    _ALIASES[_band.name.replace("B0", "B").lower()] = _band.name  # "B2" -> "B02"
# common names that are unique map too ("blue"); ambiguous ones ("rededge") do not
for _cn in {"blue", "green", "red", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22", "coastal"}:
    _ALIASES[_cn] = next(b.name for b in S2_BANDS.values() if b.earth_search_key == _cn)


#: The model's input bands unless a config or option says otherwise: the seven bands B02-B08 every Sentinel-2
#: product has at 10 or 20 m (config ``bands``; ``--bands`` of ``pixeldino search``, ``fetch`` and ``chip``).
DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08")


def canonical_band(name: str) -> str:
    """Return the canonical Sentinel-2 band id for any provider's band or asset name.

    >>> canonical_band("rededge1"), canonical_band("B8"), canonical_band("B02_10m")
    ('B05', 'B08', 'B02')
    """
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"unknown Sentinel-2 band {name!r}; use one of {', '.join(S2_BANDS)} (or a provider alias such as 'red')"
        ) from None


def canonical_bands(names: list[str]) -> list[str]:
    """Canonicalise a band list, refusing duplicates."""
    out = [canonical_band(n) for n in names]
    dupes = sorted({b for b in out if out.count(b) > 1})
    if dupes:
        raise ConfigError(f"band list names {', '.join(dupes)} more than once: {names}")
    return out


def _band_key(name: str) -> str:
    """The canonical id of a Sentinel-2 band name; any other name (a model's own band, e.g. ``NDVI``) as written."""
    try:
        return canonical_band(name)
    except ConfigError:
        return name.strip()


def band_indexes(
    descriptions: Sequence[str | None], bands: Sequence[str], *, path: str | os.PathLike[str], fix_hint: str
) -> list[int]:
    """1-based indexes (as rasterio counts) of ``bands`` in a raster, found by the raster's band descriptions.

    Descriptions and requested names match when they name the same Sentinel-2 band under any provider alias
    (``red`` = ``B04`` = ``B04_10m``); names that are no Sentinel-2 band must match as written. When two
    descriptions name the same band, the first one counts.

    Args:
        descriptions: the raster's band descriptions (``DatasetReader.descriptions``; None for an unnamed band).
        bands: the bands wanted, in the order wanted.
        path: the raster, named in the error.
        fix_hint: what the user should do when a band is missing, for the error message.

    Returns:
        One index per requested band, in the order of ``bands``.

    Raises:
        InputError: the raster lacks one of the bands (the message names the file, the missing bands, the bands it
            has and ``fix_hint``).
    """
    found: dict[str, int] = {}
    for index, description in enumerate(descriptions, start=1):
        if description:
            found.setdefault(_band_key(description), index)
    wanted = [_band_key(b) for b in bands]
    missing = [b for b in wanted if b not in found]
    if missing:
        have = ", ".join(str(d) for d in descriptions if d) or "no band descriptions"
        raise InputError(f"{path}: lacks band(s) {', '.join(missing)} (it has {have}); {fix_hint}")
    return [found[b] for b in wanted]
