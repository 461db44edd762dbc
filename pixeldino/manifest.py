"""The scene manifest: the search's checkpoint output, read by the fetch, the chips and the workflow's targets.

A small JSON file a user can read, with one entry per chosen scene and absolute asset hrefs keyed by canonical
band id (``B02``...)::

    {"pixeldino_manifest": 1, "created": "...", "provider": {...}, "catalog": "...", "collection": "...",
     "query": {...}, "rejected": [{"stac_id": "...", "tile": "...", "reason": "..."}],
     "scenes": [{"id": "S2_08WMA_20210821", "stac_id": "...", "tile": "08WMA", "datetime": "...",
                 "cloud_cover": 2.0, "snow_cover": null, "clear_fraction": 0.98, "processing_baseline": "03.00",
                 "product_level": "L1C", "boa_offset_applied": null, "crs": "EPSG:32608", "bbox": [w, s, e, n],
                 "assets": {"B02": "/abs/path/B02.tif", ...}, "mask_asset": null}]}

Hrefs are stored unsigned: Planetary Computer tokens expire, so the fetch signs them just before reading. Every
reader goes through :func:`read_manifest`, which checks the version and the keys each scene needs, so a stale or
foreign file fails with one line that says to re-run the search.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixeldino.errors import ConfigError, InputError
from pixeldino.io import read_json, write_json
from pixeldino.tiles import normalise_tile

MANIFEST_VERSION = 1
#: Keys every scene entry must have (the fetch and the workflow's targets read them).
SCENE_KEYS = ("id", "tile", "datetime", "crs", "assets")


def _validate(manifest: Any, source: str) -> dict[str, Any]:
    """``manifest`` itself when it is a scene manifest of this version whose scenes are complete.

    A complete scene has :data:`SCENE_KEYS`, and ``assets`` maps band ids to hrefs, with one href for every band
    the search asked for (``query.bands``): a scene without one of them would fail only later, in the fetch, and
    without naming the manifest.

    Raises:
        InputError: naming ``source`` and what is wrong.
    """
    if not isinstance(manifest, dict) or manifest.get("pixeldino_manifest") != MANIFEST_VERSION:
        raise InputError(
            f"{source} is not a pixeldino scene manifest (version {MANIFEST_VERSION}); re-run `pixeldino search`"
        )
    scenes = manifest.get("scenes")
    if not isinstance(scenes, list):
        raise InputError(f"{source}: manifest has no 'scenes' list; re-run `pixeldino search`")
    query = manifest.get("query")
    asked = query.get("bands") if isinstance(query, dict) else None
    wanted = [str(b) for b in asked] if isinstance(asked, list) else []
    for i, scene in enumerate(scenes):
        if not isinstance(scene, dict):
            raise InputError(f"{source}: scene #{i} is not an object; re-run `pixeldino search`")
        missing = [k for k in SCENE_KEYS if k not in scene]
        if missing:
            raise InputError(f"{source}: scene #{i} lacks {', '.join(missing)}; re-run `pixeldino search`")
        name = f"scene {scene['id']}"
        assets = scene["assets"]
        if not isinstance(assets, dict) or not assets:
            raise InputError(f"{source}: {name} has no band assets; re-run `pixeldino search`")
        empty = sorted(str(b) for b, href in assets.items() if not isinstance(href, str) or not href.strip())
        if empty:
            raise InputError(f"{source}: {name} has no href for band(s) {', '.join(empty)}; re-run `pixeldino search`")
        lacking = [b for b in wanted if b not in assets]
        if lacking:
            raise InputError(
                f"{source}: {name} has no asset for band(s) {', '.join(lacking)} (the search asked for "
                f"{', '.join(wanted)}; it has {', '.join(sorted(map(str, assets)))}); re-run `pixeldino search`"
            )
    return manifest


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write a scene manifest as JSON (atomically)."""
    _validate(manifest, "manifest to write")
    return write_json(path, manifest)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a scene manifest written by :func:`write_manifest`.

    Raises:
        InputError: the file is missing, not JSON, or not a scene manifest.
    """
    if not Path(path).exists():
        raise InputError(f"scene manifest {path} not found; run `pixeldino search` to write it")
    return _validate(read_json(path), str(path))


def select_scenes(
    manifest: Mapping[str, Any], scene_ids: Sequence[str] | None, *, source: str = "the manifest"
) -> list[dict[str, Any]]:
    """The entries of ``scene_ids`` (all scenes when None or empty), in manifest order, ready to fetch.

    Each entry gets the manifest's provider name as ``provider`` unless it names its own, since reading may need
    the provider's signing or credentials.

    Raises:
        InputError: a requested id is not in the manifest (``source`` names the file in the message).
    """
    scenes = list(manifest["scenes"])
    if scene_ids:
        wanted = set(scene_ids)
        unknown = sorted(wanted - {s["id"] for s in scenes})
        if unknown:
            raise InputError(f"no scene(s) {unknown} in {source}; pick ids from its 'scenes' list")
        scenes = [s for s in scenes if s["id"] in wanted]
    provider = (manifest.get("provider") or {}).get("name")
    return [{"provider": provider, **scene} for scene in scenes]


def manifest_scene(manifest_path: str | os.PathLike[str], scene_id: str) -> dict[str, Any]:
    """The manifest entry of one scene.

    Raises:
        InputError: the manifest is invalid or has no such scene.
    """
    for scene in read_manifest(manifest_path)["scenes"]:
        if scene["id"] == scene_id:
            return scene
    raise InputError(f"{manifest_path}: no scene {scene_id!r} in the manifest; re-run the search")


def scenes_of_tiles(
    scenes: Sequence[str | os.PathLike[str]], tiles: Sequence[str], manifest_path: str | os.PathLike[str]
) -> list[Path]:
    """The scene rasters (named ``<scene id>.tif``) whose MGRS tile is in ``tiles``; all of them if ``tiles`` is empty.

    Tiles compare by their canonical id, so ``8WMA``, ``T08WMA`` and ``08WMA`` are the same tile.

    Raises:
        ConfigError: a tile id is malformed, or no scene is of one of ``tiles`` (``chips.unlabelled_tiles``).
        InputError: the manifest is invalid.
    """
    if not tiles:
        return [Path(p) for p in scenes]
    tile_of = {s["id"]: s["tile"] for s in read_manifest(manifest_path)["scenes"]}
    wanted = {normalise_tile(t) for t in tiles}

    def canonical(tile: Any) -> str | None:
        try:
            return normalise_tile(str(tile))
        except ConfigError:
            return None  # a hand-made manifest's odd tile matches nothing instead of failing the run

    chosen = [Path(p) for p in scenes if canonical(tile_of.get(Path(p).stem, "")) in wanted]
    if not chosen:
        raise ConfigError(
            f"chips.unlabelled_tiles {list(tiles)} matches none of the scenes found ({sorted(set(tile_of.values()))}); "
            "fix the tile list or leave it empty to use every scene"
        )
    return chosen
