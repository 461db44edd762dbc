#!/usr/bin/env python
"""Rebuild ``resources/demo/`` from the RTS digitization experiment (Nitze et al. 2024).

Usage (from the repository root)::

    .venv/bin/python scripts/build_demo.py [../shared/data/rts_digitization] [--out resources/demo]

What it makes (see ``resources/demo/README.md`` for the full description):

* ``stac/``: a self-contained static STAC catalog, collection ``sentinel-2-l1c``, one item per chip, one
  single-band uint16 COG per band, asset keys as on Earth Search (``blue``, ``rededge1``...);
* ``aoi/``: the two 2.5 km study areas, both in one GeoPackage, and the Peel validation hold-out strip;
* ``labels/``: the expert-consensus RTS per site (>= half of the experts, on the 10 m grid) and all experts'
  polygons, so agreement can be recomputed.

The script is deterministic; running it twice gives the same files (up to GeoPackage timestamps).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import shapes
from shapely.geometry import box, mapping, shape

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pixeldino.bands import S2_BANDS  # noqa: E402
from pixeldino.io import COG_PROFILE, atomic_output  # noqa: E402
from pixeldino.labels import burn, consensus_mask, expert_agreement, expert_counts, read_labels  # noqa: E402

COLLECTION_ID = "sentinel-2-l1c"
HOLDOUT_WIDTH_PX = 64
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
]


@dataclass(frozen=True)
class Site:
    """One study site of the experiment and the metadata its export file name does not carry."""

    name: str  # folder name in the experiment ("Peel")
    key: str  # lower-case name used in our file names ("peel")
    tif: str
    bands: tuple[str, ...]
    # eo:cloud_cover is set by hand: the chips were chosen cloud-free, and the export has no cloud metadata.
    cloud_cover: float
    # The export name (GEE system:index) omits the spacecraft; inferred from the orbit phase (see README).
    platform: str


SITES = [
    Site(
        "Peel",
        "peel",
        "S2_20210821T210019_20210821T210020_T08WMA.tif",
        ("B02", "B03", "B04", "B05", "B06", "B07", "B08"),
        2.0,
        "sentinel-2b",
    ),
    Site(
        "Bykovsky",
        "bykovsky",
        "S2_20210721T035541_20210721T035540_T52WEE.tif",
        ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
        5.0,
        "sentinel-2a",
    ),
]

_NAME_RE = re.compile(r"^S2_(\d{8}T\d{6})_(\d{8}T\d{6})_T(\d{2})([C-X])([A-Z]{2})\.tif$")


def _parse_name(tif: str) -> tuple[dt.datetime, str, int, str, str]:
    """Datetime (UTC, datatake sensing start) and MGRS parts from a GEE Sentinel-2 export name."""
    m = _NAME_RE.match(tif)
    if not m:
        raise SystemExit(f"error: unexpected chip name {tif!r}")
    when = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
    return when, f"{m.group(3)}{m.group(4)}{m.group(5)}", int(m.group(3)), m.group(4), m.group(5)


def item_id(site: Site) -> str:
    """STAC item id and folder name: ``S2_<tile>_<yyyymmdd>`` (spacecraft left out: it is inferred, see README)."""
    when, tile, *_ = _parse_name(site.tif)
    return f"S2_{tile}_{when:%Y%m%d}"


def _write_band_cog(data: np.ndarray, profile: dict, band: str, path: Path) -> None:
    """One band as a single-band uint16 COG (DEFLATE, nodata 0) with its band name as description."""
    options = {k: v for k, v in COG_PROFILE.items() if k != "driver"}
    # the chips are 251 px: one 256 px block keeps the files small and still a valid COG
    options["blocksize"] = 256
    with atomic_output(path) as tmp:
        with rasterio.open(
            tmp,
            "w",
            driver="COG",
            width=data.shape[1],
            height=data.shape[0],
            count=1,
            dtype="uint16",
            crs=profile["crs"],
            transform=profile["transform"],
            nodata=0,
            **options,
        ) as dst:
            dst.write(data, 1)
            dst.set_band_description(1, band)


def _to_4326(geom: shapely.Geometry, epsg: int) -> shapely.Geometry:
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    dense = shapely.segmentize(geom, max_segment_length=1000.0)
    return shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def build_item(site: Site, src_dir: Path, item_dir: Path) -> pystac.Item:
    """Write the band COGs of one chip and return its STAC item (absolute asset hrefs for now)."""
    when, tile, zone, lat_band, square = _parse_name(site.tif)
    with rasterio.open(src_dir / site.name / "data" / site.tif) as src:
        if src.count != len(site.bands):
            raise SystemExit(f"error: {site.tif} has {src.count} bands, expected {len(site.bands)}")
        data = src.read()
        profile = src.profile
        epsg = src.crs.to_epsg()
        bounds = src.bounds
    footprint = _to_4326(box(*bounds), epsg)
    item = pystac.Item(
        id=item_id(site),
        geometry=mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=when,
        properties={},
        stac_extensions=list(STAC_EXTENSIONS),
        collection=COLLECTION_ID,
    )
    t = profile["transform"]
    item.properties.update(
        {
            "platform": site.platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": site.cloud_cover,
            "proj:epsg": epsg,
            "proj:code": f"EPSG:{epsg}",
            "proj:shape": [profile["height"], profile["width"]],
            "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "grid:code": f"MGRS-{tile}",
            "mgrs:utm_zone": zone,
            "mgrs:latitude_band": lat_band,
            "mgrs:grid_square": square,
            "s2:mgrs_tile": tile,
            "s2:processing_baseline": "03.00",
            "s2:product_type": "S2MSI1C",
            "pixeldino:source_file": site.tif,
        }
    )
    for i, band_id in enumerate(site.bands):
        band = S2_BANDS[band_id]
        path = item_dir / f"{band_id}.tif"
        _write_band_cog(data[i], profile, band_id, path)
        item.add_asset(
            band.earth_search_key,
            pystac.Asset(
                href=str(path),
                media_type=pystac.MediaType.COG,
                title=f"{band_id} ({band.common_name}, {band.center_wavelength_um} um), TOA reflectance x 10000",
                roles=["data", "reflectance"],
                extra_fields={
                    "eo:bands": [
                        {
                            "name": band_id,
                            "common_name": band.common_name,
                            "center_wavelength": band.center_wavelength_um,
                        }
                    ],
                    "raster:bands": [
                        {
                            "nodata": 0,
                            "data_type": "uint16",
                            "spatial_resolution": 10,
                            "scale": 0.0001,
                            "offset": 0,
                            "unit": "1",
                        }
                    ],
                    "proj:shape": [profile["height"], profile["width"]],
                    "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
                },
            ),
        )
    return item


def build_catalog(src_dir: Path, out: Path) -> list[pystac.Item]:
    """Write the static catalog under ``out/stac`` and return its items."""
    stac_dir = out / "stac"
    if stac_dir.exists():
        shutil.rmtree(stac_dir)
    items = [build_item(s, src_dir, stac_dir / COLLECTION_ID / item_id(s)) for s in SITES]
    bboxes = np.array([it.bbox for it in items])
    times = sorted(it.datetime for it in items)
    collection = pystac.Collection(
        id=COLLECTION_ID,
        description=(
            "Two 251 x 251 px Sentinel-2 L1C chips (top-of-atmosphere reflectance x 10000, uint16, nodata 0) of the "
            "RTS digitization experiment (Nitze et al. 2024), re-packaged as a static STAC collection with one "
            "Cloud-Optimized GeoTIFF per band. All bands are on the 10 m grid (the export resampled 20 m bands). "
            "Contains modified Copernicus Sentinel data 2021."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([[*bboxes[:, :2].min(axis=0), *bboxes[:, 2:].max(axis=0)]]),
            pystac.TemporalExtent([[times[0], times[-1]]]),
        ),
        license="other",
        title="pixeldino demo: Sentinel-2 L1C chips (Peel, Bykovsky)",
        providers=[
            pystac.Provider(
                "ESA / Copernicus",
                roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
                url="https://sentinels.copernicus.eu",
            ),
            pystac.Provider(
                "RTS digitization experiment (I. Nitze et al.)",
                roles=[pystac.ProviderRole.PROCESSOR],
                url="https://github.com/initze/RTS_digitization_experiment",
            ),
        ],
    )
    collection.add_items(items)
    catalog = pystac.Catalog(
        id="pixeldino-demo",
        description="pixeldino demo data: Sentinel-2 chips of the Peel plateau (NW Canada) and Bykovsky peninsula "
        "(NE Siberia) from the RTS digitization experiment.",
        title="pixeldino demo catalog",
    )
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(stac_dir))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return items


def build_aois(src_dir: Path, out: Path) -> dict[str, gpd.GeoDataFrame]:
    """Copy both study areas (as delivered, in their UTM CRS) and write both to one EPSG:4326 GeoPackage."""
    aoi_dir = out / "aoi"
    aoi_dir.mkdir(parents=True, exist_ok=True)
    aois: dict[str, gpd.GeoDataFrame] = {}
    rows = []
    for site in SITES:
        src = next((src_dir / site.name / "data").glob("*_AOI_2500.geojson"))
        dst = aoi_dir / f"{site.key}.geojson"
        with atomic_output(dst) as tmp:
            shutil.copyfile(src, tmp)
        gdf = gpd.read_file(dst)
        aois[site.key] = gdf
        rows.append({"site": site.key, "geometry": gdf.to_crs(4326).geometry.union_all()})
    with atomic_output(aoi_dir / "demo_aoi.gpkg") as tmp:
        gpd.GeoDataFrame(rows, crs=4326).to_file(tmp, layer="aoi", driver="GPKG")
    return aois


def _polygonise(mask: np.ndarray, weight: np.ndarray, transform, crs, clip: shapely.Geometry) -> list[dict]:
    """Connected pixel regions of ``mask`` as polygons clipped to ``clip``, with the mean of ``weight`` inside."""
    from scipy import ndimage

    regions, n = ndimage.label(mask, structure=np.ones((3, 3)))
    means = ndimage.mean(weight, labels=regions, index=np.arange(1, n + 1)) if n else []
    polys: dict[int, list] = {}
    for geom, value in shapes(regions.astype(np.int32), mask=mask, transform=transform, connectivity=8):
        polys.setdefault(int(value), []).append(shape(geom))
    out = []
    for value in sorted(polys):
        geom = shapely.union_all(polys[value]).intersection(clip)
        if not geom.is_empty:
            out.append({"geometry": geom, "mean_agreement": round(float(means[value - 1]), 3)})
    return out


def build_labels(src_dir: Path, out: Path, aois: dict[str, gpd.GeoDataFrame]) -> dict[str, dict]:
    """Write consensus and all-expert label files; return the agreement statistics and holdout per site."""
    label_dir = out / "labels"
    label_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for site in SITES:
        with rasterio.open(src_dir / site.name / "data" / site.tif) as src:
            transform, grid_shape, crs = src.transform, src.shape, src.crs
        aoi = aois[site.key].to_crs(crs)
        experts: dict[str, gpd.GeoDataFrame] = {}
        for shp in sorted((src_dir / "experts").glob(f"#*/{site.name}_digitized.shp")):
            experts[shp.parent.name] = read_labels(shp, crs)
        expert_rows = [
            gpd.GeoDataFrame({"expert": name, "polygon": np.arange(1, len(g) + 1)}, geometry=g.geometry.values, crs=crs)
            for name, g in experts.items()
        ]
        all_experts = pd.concat(expert_rows, ignore_index=True)
        with atomic_output(label_dir / f"experts_{site.key}.gpkg") as tmp:
            gpd.GeoDataFrame(all_experts, crs=crs).to_file(tmp, layer="experts", driver="GPKG")

        inside = burn(aoi, transform, grid_shape)
        consensus = consensus_mask(list(experts.values()), transform, grid_shape, 0.5, footprint=inside)
        share = expert_counts(list(experts.values()), transform, grid_shape) / len(experts)
        polys = _polygonise(consensus, share, transform, crs, aoi.geometry.union_all())
        cons = gpd.GeoDataFrame(
            [{"id": i + 1, "site": site.key, "n_experts": len(experts), **p} for i, p in enumerate(polys)],
            geometry="geometry",
            crs=crs,
        )
        with atomic_output(label_dir / f"{site.key}_consensus.gpkg") as tmp:
            cons.to_file(tmp, layer="rts", driver="GPKG")
        # the written polygons must rasterise back to exactly the consensus pixels
        roundtrip = burn(cons, transform, grid_shape)
        if not np.array_equal(roundtrip, consensus):
            raise SystemExit(f"error: {site.key} consensus polygons do not rasterise back to the consensus mask")
        agreement = expert_agreement(experts, transform, grid_shape, footprint=inside)
        results[site.key] = {
            "agreement": agreement,
            "consensus_pixels": int(consensus.sum()),
            "n_polygons": len(cons),
            "aoi_pixels": int(inside.sum()),
            "consensus": consensus,
            "inside": inside,
            "transform": transform,
            "crs": crs,
        }
    return results


def choose_holdout(out: Path, peel: dict) -> dict:
    """Pick the 64-px side strip of the Peel AOI whose share of consensus RTS is closest to its share of area."""
    inside, consensus, transform = peel["inside"], peel["consensus"], peel["transform"]
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    w = HOLDOUT_WIDTH_PX
    strips = {
        "north": (r0, r0 + w, c0, c1),
        "south": (r1 - w, r1, c0, c1),
        "west": (r0, r1, c0, c0 + w),
        "east": (r0, r1, c1 - w, c1),
    }
    total_rts = int(consensus.sum())
    total_area = int(inside.sum())
    scores = {}
    for side, (a, b, c, d) in strips.items():
        rts = int(consensus[a:b, c:d].sum())
        area = int(inside[a:b, c:d].sum())
        scores[side] = {
            "rts_pixels": rts,
            "aoi_pixels": area,
            "rts_share": rts / total_rts,
            "area_share": area / total_area,
        }
    best = min(scores, key=lambda s: abs(scores[s]["rts_share"] - scores[s]["area_share"]))
    a, b, c, d = strips[best]
    left, top = transform @ (c, a)
    right, bottom = transform @ (d, b)
    strip = gpd.GeoDataFrame(
        {"name": ["peel_holdout"], "side": [best], "width_px": [w]},
        geometry=[box(left, bottom, right, top)],
        crs=peel["crs"],
    )
    with atomic_output(out / "aoi" / "peel_holdout.geojson") as tmp:
        strip.to_file(tmp, driver="GeoJSON", layer="peel_holdout")
    return {
        "side": best,
        "bounds": [float(v) for v in (left, bottom, right, top)],
        "candidates": scores,
        "rows": [int(a), int(b)],
        "cols": [int(c), int(d)],
    }


README_TEMPLATE = """# pixeldino demo data

Small, real data to run the whole pipeline in minutes and to test it: two Sentinel-2 L1C chips with retrogressive
thaw slump (RTS) outlines digitized independently by domain experts. **Peel** is the labelled training site;
**Bykovsky** is the unlabelled target site, whose labels are used only for evaluation.

Generated by `scripts/build_demo.py` (do not edit by hand); rebuild with

    .venv/bin/python scripts/build_demo.py ../shared/data/rts_digitization

## Provenance and licence

- Source: the RTS digitization experiment, github.com/initze/RTS_digitization_experiment, MIT licence (copied to
  `LICENSE` here).
- Cite: Nitze, I. et al. (2024), A Labeling Intercomparison of Retrogressive Thaw Slumps by a Diverse Group of
  Domain Experts, *Permafrost and Periglacial Processes*, doi:10.1002/ppp.2249.
- Imagery: Contains modified Copernicus Sentinel data 2021.

## Files

| file | content |
|---|---|
| `stac/catalog.json` | self-contained static STAC catalog (relative hrefs); collection `sentinel-2-l1c` in `stac/sentinel-2-l1c/collection.json` |
{item_rows}
| `aoi/peel.geojson`, `aoi/bykovsky.geojson` | the 2.5 km x 2.5 km study areas as delivered (EPSG:32608 / EPSG:32652) |
| `aoi/demo_aoi.gpkg` | both study areas, layer `aoi`, EPSG:4326, field `site` (`peel`, `bykovsky`) |
| `aoi/peel_holdout.geojson` | Peel validation strip, EPSG:32608 (see below) |
| `labels/peel_consensus.gpkg`, `labels/bykovsky_consensus.gpkg` | expert-consensus RTS, layer `rts`, scene CRS; fields `id`, `site`, `n_experts` (experts on the site's panel), `mean_agreement` (mean share of experts that drew each pixel) |
| `labels/experts_peel.gpkg`, `labels/experts_bykovsky.gpkg` | every expert's polygons as drawn (layer `experts`, scene CRS; fields `expert` e.g. `#01`, `polygon`) |

Each item's bands are single-band uint16 Cloud-Optimized GeoTIFFs (DEFLATE, nodata 0, top-of-atmosphere
reflectance x 10000, all on the chip's 10 m grid: the original export had already resampled the 20 m bands).
Asset keys follow Earth Search (`blue`, `green`, `red`, `rededge1`-`rededge3`, `nir`, `nir08`, `swir16`,
`swir22`), each with `eo:bands` (`name` `B02`..., `common_name`, `center_wavelength`) and `raster:bands`. Item
properties: `datetime` from the file name (UTC datatake start), `proj:epsg`/`proj:code`/`proj:shape`/
`proj:transform`, `grid:code` (`MGRS-08WMA`), `mgrs:*`, `s2:mgrs_tile`, `s2:processing_baseline` `03.00` (the
L1C baseline in force in 2021; the export does not record it), `constellation` `sentinel-2`.

Set by hand, because the export (Google Earth Engine `system:index` names) does not carry them:
- `eo:cloud_cover` {cloud_note}: the chips were chosen cloud-free; the values
  differ only so that a cloud limit can be tested.
- `platform`: inferred from the orbit phase. Sentinel-2A and -2B fly the same 10-day ground track 5 days apart
  (half an orbit cycle); counting orbits (143 per 10 days) from a known S2A granule
  (S2A_MSIL1C_20170105T013442_N0204_R031_T53NMJ) puts Bykovsky on the S2A phase and Peel on the S2B phase.

## How the labels were made

The experts drew on 3 m PlanetScope imagery of the same summer. Each expert's polygons (repaired with shapely
`make_valid`) were rasterised on the chip's 10 m grid by pixel centre (`all_touched=False`) inside the study area;
the consensus is every pixel drawn by at least half of the site's experts ({peel_n} of {peel_k} for Peel,
{byk_n} of {byk_k} for Bykovsky; experts #07 and #08 did not map Bykovsky), polygonised with
`rasterio.features.shapes` and clipped to the study area. The consensus polygons rasterise back to exactly these
pixels. Peel: {peel_px} consensus pixels in {peel_polys} polygons; Bykovsky: {byk_px} pixels in {byk_polys}.

## Expert agreement

Each expert against the >= 50 % consensus of the *other* experts, pixel IoU on the 10 m grid inside the study area
(`pixeldino.labels.expert_agreement`; asserted in `tests/test_labels.py`):

| site | experts | mean IoU | range | per expert |
|---|---|---|---|---|
{agreement_rows}

This is the ceiling a model can be expected to reach against one set of labels: Peel slumps are clear, Bykovsky's
are ambiguous ({byk_zero} of the {byk_k} experts share no pixel with the others' consensus).

## Peel hold-out strip

`aoi/peel_holdout.geojson` is the {hold_side} {hold_w}-pixel strip of the Peel study area (grid-aligned, bounds
{hold_bounds} in EPSG:32608; chip rows {hold_rows}, columns {hold_cols}). Of the four 64-px side strips (each
25.6 % of the study area) it holds the share of consensus RTS closest to its share of area:

| side | consensus RTS pixels | share of Peel RTS |
|---|---|---|
{hold_rows_table}

Training chips must not overlap it; it is tiled into validation chips for threshold calibration and an honest
held-out Peel IoU.
"""


def write_readme(out: Path, items: list[pystac.Item], results: dict[str, dict], holdout: dict) -> None:
    """Write README.md with the numbers measured in this build."""

    def band_names(it: pystac.Item) -> str:
        return ", ".join(a.extra_fields["eo:bands"][0]["name"] for a in it.assets.values())

    item_rows = "\n".join(
        f"| `stac/{COLLECTION_ID}/{it.id}/` | {it.properties['pixeldino:source_file']}: "
        f"{it.properties['proj:code']}, {len(it.assets)} bands ({band_names(it)}), {it.datetime:%Y-%m-%d} |"
        for it in items
    )
    agreement_rows = "\n".join(
        f"| {key} | {r['agreement']['n_experts']} | {r['agreement']['mean']:.2f} | "
        f"{r['agreement']['min']:.2f}-{r['agreement']['max']:.2f} | "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["agreement"]["per_expert"].items())
        + " |"
        for key, r in results.items()
    )
    hold_rows_table = "\n".join(
        f"| {side} | {c['rts_pixels']} | {c['rts_share']:.1%} |" for side, c in holdout["candidates"].items()
    )
    peel, byk = results["peel"], results["bykovsky"]
    text = README_TEMPLATE.format(
        item_rows=item_rows,
        cloud_note=", ".join(f"{it.properties['eo:cloud_cover']:g} ({it.id})" for it in items),
        peel_k=peel["agreement"]["n_experts"],
        peel_n=int(np.ceil(0.5 * peel["agreement"]["n_experts"])),
        byk_k=byk["agreement"]["n_experts"],
        byk_n=int(np.ceil(0.5 * byk["agreement"]["n_experts"])),
        peel_px=peel["consensus_pixels"],
        peel_polys=peel["n_polygons"],
        byk_zero=sum(v == 0 for v in byk["agreement"]["per_expert"].values()),
        byk_px=byk["consensus_pixels"],
        byk_polys=byk["n_polygons"],
        agreement_rows=agreement_rows,
        hold_side=holdout["side"],
        hold_w=HOLDOUT_WIDTH_PX,
        hold_bounds=", ".join(f"{v:.0f}" for v in holdout["bounds"]),
        hold_rows=f"{holdout['rows'][0]}-{holdout['rows'][1] - 1}",
        hold_cols=f"{holdout['cols'][0]}-{holdout['cols'][1] - 1}",
        hold_rows_table=hold_rows_table,
    )
    with atomic_output(out / "README.md") as tmp:
        tmp.write_text(text)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source",
        nargs="?",
        default=str(REPO / ".." / "shared" / "data" / "rts_digitization"),
        help="the rts_digitization folder (default: ../shared/data/rts_digitization)",
    )
    parser.add_argument("--out", default=str(REPO / "resources" / "demo"), help="output folder")
    args = parser.parse_args(argv)
    src_dir, out = Path(args.source).resolve(), Path(args.out)
    if not (src_dir / "experts").is_dir():
        print(
            f"error: {src_dir} is not the rts_digitization folder (no experts/ inside); pass its path", file=sys.stderr
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)

    items = build_catalog(src_dir, out)
    aois = build_aois(src_dir, out)
    results = build_labels(src_dir, out, aois)
    holdout = choose_holdout(out, results["peel"])
    with atomic_output(out / "LICENSE") as tmp:
        shutil.copyfile(src_dir / "LICENSE", tmp)
    write_readme(out, items, results, holdout)

    for it in items:
        print(f"item {it.id}: {it.properties['proj:code']}, {len(it.assets)} bands, {it.datetime:%Y-%m-%dT%H:%M:%SZ}")
    for key, res in results.items():
        ag = res["agreement"]
        per = " ".join(f"{k}={v:.2f}" for k, v in ag["per_expert"].items())
        print(
            f"{key}: {ag['n_experts']} experts, consensus {res['consensus_pixels']} px in {res['n_polygons']} "
            f"polygons; leave-one-out IoU mean {ag['mean']:.3f} ({ag['min']:.2f}-{ag['max']:.2f}): {per}"
        )
    print(
        f"holdout: {holdout['side']} strip, rows {holdout['rows']} cols {holdout['cols']}, bounds {holdout['bounds']}"
    )
    for side, s in holdout["candidates"].items():
        print(f"  {side:5s}: {s['rts_pixels']:5d} RTS px ({s['rts_share']:.1%} of RTS, {s['area_share']:.1%} of area)")
    print(f"{out}: {_dir_size(out) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
