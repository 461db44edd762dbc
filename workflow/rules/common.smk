# Shared set-up: config validation, paths, and the functions that expand targets from the scene manifest.
import json
import sys
from pathlib import Path

from pixeldino.config import validate_config
from pixeldino.errors import ConfigError

try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"), source="config")
except ConfigError as exc:
    # one clear line instead of a traceback through Snakemake's parser
    sys.exit(f"error: {exc}")


RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
TRAIN_MODEL = config["train"]["model"]
MODEL = TRAIN_MODEL or f"{RESULTS}/model/model.safetensors"
SITES = [site["name"] for site in config["evaluate"]["sites"]]


def manifest_scenes():
    """Scenes chosen by the search checkpoint (re-evaluated once the manifest exists)."""
    manifest = checkpoints.search_scenes.get().output.manifest
    return json.loads(Path(manifest).read_text())["scenes"]


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
