"""Where Sentinel-2 scenes come from: provider presets, asset signing, credentials and server capabilities.

A provider is chosen in the config section ``stac`` (:class:`StacParams`) and resolved here into an endpoint, a
default collection and the few per-provider conventions the search and fetch need:

========================  ==============================================  ================================
provider                  endpoint (default collection)                   reading the assets
========================  ==============================================  ================================
``local``                 a static catalog on disk (all collections)      plain files
``earth-search``          Element 84 Earth Search v1 (sentinel-2-l2a)     public https COGs, no credentials
``planetary-computer``    Microsoft Planetary Computer (sentinel-2-l2a)   https COGs signed with SAS tokens
``cdse``                  Copernicus Data Space STAC (sentinel-2-l2a)     S3 (``eodata``) with credentials
``custom``                any STAC API URL (collection required)          whatever GDAL can open
========================  ==============================================  ================================

Credentials never appear in config files, manifests, sidecars or logs: they are read from environment variables
at fetch time (:meth:`Provider.gdal_options`) and handed to GDAL only. Planetary Computer tokens are short-lived,
so the manifest keeps the *unsigned* hrefs and the fetch signs them just before reading
(:meth:`Provider.sign_href`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pixeldino.errors import ConfigError

#: The provider names (``stac.provider``).
ProviderName = Literal["local", "earth-search", "planetary-computer", "cdse", "custom"]
PROVIDERS: tuple[str, ...] = get_args(ProviderName)

#: Conformance classes that announce CQL2 filtering of item searches (STAC API Filter extension, OGC API Part 3).
FILTER_CONFORMANCE = (
    "https://api.stacspec.org/v1.0.0-rc.1/item-search#filter",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "https://api.stacspec.org/v1.0.0-rc.3/item-search#filter",
    "https://api.stacspec.org/v1.0.0/item-search#filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
)
#: Conformance classes that announce CQL2-JSON (the encoding pixeldino sends).
CQL2_JSON_CONFORMANCE = ("http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",)
#: Conformance classes of the older STAC ``query`` extension.
QUERY_CONFORMANCE = (
    "https://api.stacspec.org/v1.0.0-rc.1/item-search#query",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#query",
    "https://api.stacspec.org/v1.0.0-rc.3/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#query",
)

#: CDSE S3 credentials: pixeldino's own names first, then the generic AWS ones.
CDSE_KEY_VARS = ("CDSE_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
CDSE_SECRET_VARS = ("CDSE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
CDSE_S3_ENDPOINT = "eodata.dataspace.copernicus.eu"


@dataclass(frozen=True)
class Provider:
    """A resolved scene provider.

    Attributes:
        name: one of :data:`PROVIDERS`.
        catalog: STAC API root URL, or the path of a static catalog (``local``).
        collection: collection to search; None searches every collection of a local catalog.
        tile_property: item property holding the MGRS tile (used in server-side filters).
        tile_prefix: prefix of that property's values (``MGRS-`` for ``grid:code``).
        snow_property: item property with the snow/ice percentage.
        sign_assets: hrefs must be signed before reading (Planetary Computer).
        credential_vars: environment variables that hold the credentials to read assets (names only).
    """

    name: str
    catalog: str
    collection: str | None
    tile_property: str = "grid:code"
    tile_prefix: str = "MGRS-"
    snow_property: str = "s2:snow_ice_percentage"
    sign_assets: bool = False
    credential_vars: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_api(self) -> bool:
        """True for a STAC API (searched with pystac-client), False for a static catalog on disk."""
        return self.catalog.startswith(("http://", "https://"))

    def tile_value(self, tile: str) -> str:
        """The value of :attr:`tile_property` for an MGRS tile (``08WMA`` -> ``MGRS-08WMA`` on Earth Search)."""
        return f"{self.tile_prefix}{tile}"

    def sign_href(self, href: str) -> str:
        """Make an asset href readable: signs Planetary Computer blob URLs, returns others unchanged."""
        if not self.sign_assets:
            return href
        import planetary_computer

        # sign() leaves hrefs outside Azure blob storage untouched; blob URLs get a SAS token (one HTTP request
        # per storage container, cached by the package, valid for about an hour)
        return str(planetary_computer.sign(href))

    def gdal_options(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """GDAL configuration needed to read this provider's assets (credentials from the environment).

        Raises:
            ConfigError: the provider needs credentials and the environment variables are not set.
        """
        env = os.environ if environ is None else environ
        if self.name != "cdse":
            return {}
        key = next((env[v] for v in CDSE_KEY_VARS if env.get(v)), None)
        secret = next((env[v] for v in CDSE_SECRET_VARS if env.get(v)), None)
        if not key or not secret:
            raise ConfigError(
                "reading Copernicus Data Space assets needs S3 credentials: set the environment variables "
                f"{CDSE_KEY_VARS[0]} and {CDSE_SECRET_VARS[0]} (create keys at "
                "https://eodata-s3keysmanager.dataspace.copernicus.eu); never put them in a config file"
            )
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_S3_ENDPOINT": CDSE_S3_ENDPOINT,
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_HTTPS": "YES",
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for manifests and sidecars (never contains credentials)."""
        return {"name": self.name, "catalog": self.catalog, "collection": self.collection}


_PRESETS: dict[ProviderName, dict[str, Any]] = {
    "earth-search": {
        "catalog": "https://earth-search.aws.element84.com/v1",
        "collection": "sentinel-2-l2a",
    },
    "planetary-computer": {
        "catalog": "https://planetarycomputer.microsoft.com/api/stac/v1",
        "collection": "sentinel-2-l2a",
        "tile_property": "s2:mgrs_tile",
        "tile_prefix": "",
        "sign_assets": True,
    },
    "cdse": {
        "catalog": "https://stac.dataspace.copernicus.eu/v1",
        "collection": "sentinel-2-l2a",
        "credential_vars": CDSE_KEY_VARS[:1] + CDSE_SECRET_VARS[:1],
    },
}
#: The providers with a fixed endpoint (the others read ``stac.catalog``).
PRESETS: tuple[ProviderName, ...] = tuple(_PRESETS)


@dataclass
class StacParams:
    """Where scenes come from: the config section ``stac``, resolved by :func:`resolve_provider`.

    Credentials never go here: they are read from environment variables when the assets are read.

    Attributes:
        provider: ``local`` (the static catalog in ``catalog``), ``earth-search`` (Element 84 Earth Search v1,
            no credentials), ``planetary-computer`` (Microsoft Planetary Computer, assets signed with SAS tokens),
            ``cdse`` (Copernicus Data Space; S3 credentials from the environment variables CDSE_S3_ACCESS_KEY and
            CDSE_S3_SECRET_KEY) or ``custom`` (the STAC API URL in ``catalog``); None infers it from ``catalog``:
            ``custom`` for a URL, ``local`` for a path, ``earth-search`` without one.
        catalog: the static catalog (``catalog.json`` or its folder, provider ``local``) or STAC API URL (provider
            ``custom``); the presets ignore it.
        collection: collection id; None takes the provider's default (sentinel-2-l2a for the presets, every
            collection of a local catalog). sentinel-2-l1c gives top-of-atmosphere data without an SCL quality mask.
    """

    provider: ProviderName | None = None
    catalog: str | None = None
    collection: str | None = None

    def __post_init__(self) -> None:
        if self.provider is not None and self.provider not in PROVIDERS:
            raise ConfigError(f"stac.provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.catalog is not None:
            self.catalog = os.fspath(self.catalog)  # a Path from Python callers; configs hold strings


def infer_provider(catalog: str | None) -> ProviderName:
    """The provider a bare catalog value implies: ``custom`` for a URL, ``local`` for a path, else Earth Search."""
    if catalog is None:
        return "earth-search"
    return "custom" if catalog.startswith(("http://", "https://")) else "local"


def resolve_provider(stac: StacParams) -> Provider:
    """Resolve the ``stac`` parameters into a :class:`Provider` (endpoint, collection, conventions).

    ``catalog`` is the static catalog (``local``) or the STAC API URL (``custom``); the presets have fixed
    endpoints and ignore it. ``collection`` overrides the preset's default collection.

    Raises:
        ConfigError: a ``local`` provider without a catalog or given a URL, a ``custom`` provider without a URL or
            collection.
    """
    name = stac.provider or infer_provider(stac.catalog)
    catalog, collection = stac.catalog, stac.collection
    if name == "local":
        if not catalog:
            raise ConfigError("stac.provider 'local' needs stac.catalog: the path of a static STAC catalog.json")
        if catalog.startswith(("http://", "https://")):
            raise ConfigError(f"stac.catalog {catalog} is a URL; set stac.provider to 'custom' for a STAC API")
        return Provider("local", catalog, collection)
    if name == "custom":
        url = catalog or ""
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"stac.provider 'custom' needs stac.catalog to be a STAC API URL (got {url or 'nothing'}); "
                "use provider 'local' for a catalog on disk"
            )
        if not collection:
            raise ConfigError(f"stac.provider 'custom' ({url}) needs stac.collection, e.g. sentinel-2-l2a")
        return Provider("custom", url.rstrip("/"), collection)
    preset = dict(_PRESETS[name])
    if collection:
        preset["collection"] = collection
    return Provider(name, **preset)


def server_capabilities(conforms_to: Iterable[str]) -> dict[str, bool]:
    """Which server-side filters a STAC API offers, from the ``conformsTo`` list of its landing page.

    Returns:
        ``{"filter": ..., "query": ...}``: ``filter`` is True when the server announces the Filter extension and
        CQL2-JSON (or the Filter extension alone, whose STAC profile implies CQL2-JSON support).
    """
    classes = {c.rstrip("/") for c in conforms_to}
    has_filter = any(c in classes for c in FILTER_CONFORMANCE)
    stac_filter = any(c.startswith("https://api.stacspec.org/") and c.endswith("#filter") for c in classes)
    cql2_json = any(c in classes for c in CQL2_JSON_CONFORMANCE)
    return {
        "filter": (has_filter and cql2_json) or stac_filter,
        "query": any(c in classes for c in QUERY_CONFORMANCE),
    }


def cql2_filter(
    *,
    max_cloud_cover: float | None = None,
    max_snow_cover: float | None = None,
    snow_property: str = "s2:snow_ice_percentage",
    tile_property: str | None = None,
    tile_values: Sequence[str] = (),
) -> dict[str, Any] | None:
    """A CQL2-JSON ``filter`` on cloud cover, snow cover and tile; None when there is nothing to filter on.

    A limit of 100 % filters nothing and is left out, so scenes without the property are not dropped.
    """
    args: list[dict[str, Any]] = []
    if max_cloud_cover is not None and max_cloud_cover < 100:
        args.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, float(max_cloud_cover)]})
    if max_snow_cover is not None and max_snow_cover < 100:
        args.append({"op": "<=", "args": [{"property": snow_property}, float(max_snow_cover)]})
    if tile_property and tile_values:
        args.append({"op": "in", "args": [{"property": tile_property}, list(tile_values)]})
    if not args:
        return None
    return args[0] if len(args) == 1 else {"op": "and", "args": args}
