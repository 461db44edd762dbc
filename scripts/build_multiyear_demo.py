"""Build a two-year variant of the demo catalog: the real 2021 chips plus a synthetic "2023" copy of each.

The 2023 copy is the same imagery, moved by a known sub-pixel shift (Fourier shift of every band), as a
misregistered later acquisition would be. The change rule must measure the shift (co-registration), remove it and
then find the slumps stable: the imagery did not change. Used by ``config/test/multiyear.yaml`` and its test:

    .venv/bin/python scripts/build_multiyear_demo.py resources/multiyear   # writes resources/multiyear/stac/
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import rasterio
from scipy import ndimage

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo" / "stac"
#: content offset of the 2023 copy (dx east, dy south, pixels)
SHIFT = (0.6, -0.4)
YEAR = 2023


def shifted_copy(src: Path, dst: Path, shift: tuple[float, float]) -> None:
    with rasterio.open(src) as ds:
        profile = ds.profile
        data = ds.read(1).astype(np.float64)
        tags, desc = ds.tags(), ds.descriptions
    dx, dy = shift
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(data), (dy, dx))).real
    out = np.clip(np.rint(moved), 1, 65535).astype(np.uint16)
    out[data == 0] = 0
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(out, 1)
        ds.update_tags(**tags)
        ds.descriptions = desc


def build(out_dir: Path, shift: tuple[float, float] = SHIFT) -> Path:
    stac = out_dir.resolve() / "stac"
    if stac.exists():
        shutil.rmtree(stac)
    shutil.copytree(DEMO, stac)
    catalog = pystac.Catalog.from_file(str(stac / "catalog.json"))
    collection = next(catalog.get_children())
    for item in list(collection.get_items()):
        new_id = item.id[:-8] + f"{YEAR}" + item.id[-4:]
        new_dir = stac / collection.id / new_id
        new_dir.mkdir()
        copy = item.clone()
        copy.id = new_id
        copy.datetime = item.datetime.replace(year=YEAR)
        copy.properties["pixeldino:synthetic"] = f"{item.id} moved by dx {shift[0]} px, dy {shift[1]} px"
        for key, asset in copy.assets.items():
            src = Path(item.assets[key].get_absolute_href())
            dst = new_dir / src.name
            shifted_copy(src, dst, shift)
            asset.href = str(dst.resolve())
        collection.add_item(copy)
    catalog.normalize_hrefs(str(stac))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    (out_dir / "shift.json").write_text(json.dumps({"year": YEAR, "dx_px": shift[0], "dy_px": shift[1]}) + "\n")
    return stac / "catalog.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    print(build(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()
