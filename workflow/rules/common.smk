# Shared set-up: config validation, paths, and the functions that expand targets from the scene manifest.
import json
import sys
from pathlib import Path

from pixeldino.config import validate_config
from pixeldino.errors import ConfigError

try:
    validate_config(config, source="config", configfiles=workflow.overwrite_configfiles or ["config/config.yaml"])
except ConfigError as exc:
    # one clear line instead of a traceback through Snakemake's parser
    sys.exit(f"error: {exc}")

from pixeldino.auxlayers import input_bands

try:
    # the model's input bands: the config's bands, then the auxiliary layers aux: enables (chip and train read them)
    INPUT_BANDS = input_bands(config["bands"], config["aux"])
except ConfigError as exc:
    sys.exit(f"error: config: {exc}")


RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
TRAIN_MODEL = config["train"]["model"]
MODEL = TRAIN_MODEL or f"{RESULTS}/model/model.safetensors"
SITES = [site["name"] for site in config["evaluate"]["sites"]]
# A pre-made manifest (search.manifest) replaces the search checkpoint: the DAG is known up front, which lets a
# dry run plan thousands of tiles without network access and pins the scenes of a published map.
PREMADE_MANIFEST = config["search"]["manifest"]
MANIFEST = PREMADE_MANIFEST or f"{RESULTS}/manifest.json"


def keep_or_temp(path, kind):
    """Wrap ``path`` in temp() unless config 'keep' says to keep this kind of intermediate."""
    return path if config["keep"][kind] else temp(path)


_MANIFEST_CACHE = {}


def _read_scenes(path):
    # input functions call this once per job: parse the (possibly large) manifest once per version of the file;
    # read_manifest checks it, so a stale or foreign file fails naming the file and the fix, not with a KeyError
    from pixeldino.manifest import read_manifest

    p = Path(path)
    key = (str(p), p.stat().st_mtime_ns)
    if key not in _MANIFEST_CACHE:
        _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[key] = read_manifest(p)["scenes"]
    return _MANIFEST_CACHE[key]


def manifest_scenes():
    """Scenes of the manifest: the pre-made one, or the search checkpoint's (re-evaluated once it exists)."""
    if PREMADE_MANIFEST:
        return _read_scenes(PREMADE_MANIFEST)
    return _read_scenes(checkpoints.search_scenes.get().output.manifest)


def scene_ids(wildcards=None):
    return [scene["id"] for scene in manifest_scenes()]


def scene_rasters(wildcards=None):
    return expand(f"{RESULTS}/scenes/{{scene}}.tif", scene=scene_ids())


def scene_polygons(wildcards=None):
    return expand(f"{RESULTS}/polygons/{{scene}}.gpkg", scene=scene_ids())


def scene_predictions(wildcards=None):
    return expand(f"{RESULTS}/predictions/{{scene}}_prob.tif", scene=scene_ids())


def evaluation_outputs():
    if not SITES:
        return []
    return [f"{RESULTS}/evaluation/metrics.json"] + expand(
        f"{RESULTS}/evaluation/quicklook_{{site}}.png", site=SITES
    )


# Maps per year and change (change.smk): only when search.years has at least two years.
CHANGE_YEARS = sorted(config["search"]["years"])
CHANGE = len(CHANGE_YEARS) >= 2
CHANGE_OUTPUTS = {
    "gpkg": f"{RESULTS}/rts_change.gpkg",
    "tracks_parquet": f"{RESULTS}/rts_tracks.parquet",
    "years_parquet": f"{RESULTS}/rts_years.parquet",
    "change_png": f"{RESULTS}/change/change_map.png",
    "growth_png": f"{RESULTS}/change/growth.png",
}


def manifest_tiles(wildcards=None):
    return sorted({s["tile"] for s in manifest_scenes()})


def tile_scene_ids(tile):
    return [s["id"] for s in manifest_scenes() if s["tile"] == tile]


def coregistration_sidecars(wildcards=None):
    return expand(f"{RESULTS}/coregistration/{{tile}}.json", tile=manifest_tiles())
