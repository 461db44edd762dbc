"""The ``pixeldino`` command: one verb per pipeline stage, the same entry points the Snakemake workflow calls.

    pixeldino search  --catalog resources/demo/stac/catalog.json --aoi aoi.gpkg --out manifest.json
    pixeldino search  --provider earth-search --aoi=-136,67.9,-135.5,68.2 --years 2021 2023 --out manifest.json
    pixeldino fetch   --manifest manifest.json --out-dir scenes/
    pixeldino chip    --scenes scenes/*.tif --labels rts.gpkg --footprint aoi.geojson --out chips.zarr
    pixeldino train   --chips chips.zarr --out-dir model/
    pixeldino predict SCENE.tif --model model/model.safetensors --out prob.tif
    pixeldino polygonize prob.tif --out rts.gpkg
    pixeldino merge   polygons/*.gpkg --out rts_polygons.gpkg
    pixeldino coregister scenes/*_T08WMA*.tif --out coregistration/08WMA.json
    pixeldino change  polygons/*.gpkg --years 2021 2023 --coregistration coregistration/*.json --out rts_change.gpkg
    pixeldino catalog --run demo --sidecars scenes/*.json --probabilities predictions/*_prob.tif --out stac/
    pixeldino card    model/model.safetensors
    pixeldino evaluate --prediction prob.tif --labels rts.gpkg --out metrics.json
    pixeldino config  my.yaml

Every stage setting is an option generated from the stage's parameter dataclass (:mod:`pixeldino.params`), with
the dataclass's default and documentation: the CLI, the workflow config and the library share one default. This
module builds the parser; what each verb then does is in :mod:`pixeldino.commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pixeldino import __version__, commands
from pixeldino.bands import DEFAULT_BANDS
from pixeldino.params import add_dataclass_options

Handler = Callable[[argparse.Namespace], Any]


def _bands(value: str) -> list[str]:
    """``--bands`` of search and fetch: Sentinel-2 band ids or names, as canonical ids."""
    from pixeldino.bands import canonical_bands
    from pixeldino.errors import ConfigError

    try:
        return canonical_bands([b for b in value.replace(" ", ",").split(",") if b])
    except ConfigError as exc:
        raise ConfigError(f"--bands {value}: {exc}") from None


def _input_bands(value: str) -> list[str]:
    """``--bands`` of chip and train: Sentinel-2 bands, then auxiliary layers the scenes carry (``slope``...)."""
    from pixeldino.errors import ConfigError
    from pixeldino.terrain import canonical_input_bands

    try:
        return canonical_input_bands([b for b in value.replace(" ", ",").split(",") if b])
    except ConfigError as exc:
        raise ConfigError(f"--bands {value}: {exc}") from None


class _OutputPath(argparse.Action):
    """Stores the option's value and records it among the paths the verb writes: an interrupted verb names them."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.outputs = [*getattr(namespace, "outputs", []), values]


_BANDS_HELP = "comma-separated band ids (e.g. B02,B03,B04 or blue,green,red)"
_INPUT_BANDS_HELP = (
    f"{_BANDS_HELP}, then the auxiliary layers the scenes were fetched with (--aux-*), e.g. "
    "B02,B03,B04,B08,slope,relative_elevation"
)


def _bands_option(
    p: argparse.ArgumentParser, default: str | None = ",".join(DEFAULT_BANDS), *, aux: bool = False
) -> None:
    """``--bands``; with ``aux`` the auxiliary layers (``slope``...) may follow the Sentinel-2 bands."""
    parse = _input_bands if aux else _bands
    p.add_argument(
        "--bands",
        type=parse,
        default=parse(default) if default else None,
        help=_INPUT_BANDS_HELP if aux else _BANDS_HELP,
    )


def _search_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino search``."""
    from pixeldino.providers import StacParams
    from pixeldino.search import SearchParams

    add_dataclass_options(p, StacParams)
    add_dataclass_options(p, SearchParams, exclude=("manifest",))
    _bands_option(p)
    p.add_argument("--out", action=_OutputPath, required=True, help="manifest JSON to write")


def _fetch_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino fetch``."""
    from pixeldino.auxlayers import AuxParams
    from pixeldino.fetch import FetchParams

    p.add_argument("--manifest", required=True)
    p.add_argument("--scene", nargs="*", help="only these scene ids (default: all)")
    _bands_option(p)
    p.add_argument("--aoi", help="clip to this area of interest (vector file or 'W,S,E,N')")
    add_dataclass_options(p, FetchParams, exclude=("clip_to_aoi", "local"))
    add_dataclass_options(p, AuxParams, prefix="aux-")  # auxiliary layers: --aux-dem, --aux-dem-file, ...
    p.add_argument(
        "--out-dir", action=_OutputPath, required=True, help="scene COGs go here (composites in OUT_DIR/composites/)"
    )
    p.add_argument("--overwrite", action="store_true", help="fetch again even scenes that are complete")


def _chip_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino chip``."""
    from pixeldino.chip import ChipParams

    p.add_argument("--scenes", nargs="+", required=True, help="scene COGs")
    _bands_option(p, aux=True)
    p.add_argument("--labels", help="RTS polygons (any vector format/CRS)")
    p.add_argument("--footprint", help="area where the labels are complete")
    p.add_argument("--holdout", help="part of the footprint kept for validation")
    p.add_argument("--unlabelled-scenes", nargs="*", help="scenes for unlabelled chips (default: --scenes)")
    add_dataclass_options(p, ChipParams, aliases={"size": ("--chip-size",)})
    p.add_argument("--out", action=_OutputPath, required=True, help="zarr store to write")


def _train_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino train``."""
    from pixeldino.normalise import METHODS
    from pixeldino.train import TrainConfig

    p.add_argument("--chips", required=True, help="chip store (zarr)")
    p.add_argument(
        "--out-dir",
        action=_OutputPath,
        required=True,
        help="model.safetensors, model.json, training_log.csv, training_curves.png and the checkpoint go here",
    )
    _bands_option(p, default=None, aux=True)
    p.add_argument(
        "--no-resume", dest="resume", action="store_false", help="start from scratch even if OUT_DIR holds a checkpoint"
    )
    p.add_argument(
        "--normalisation",
        dest="normalisation_method",
        choices=METHODS,
        help="normalisation method (default: TrainConfig's, logsigmoid); zscore statistics are computed "
        "from the training chips",
    )
    add_dataclass_options(p, TrainConfig, exclude=("normalisation",), aliases={"num_threads": ("--threads",)})


def _predict_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino predict``."""
    from pixeldino.predict import PredictParams
    from pixeldino.quality import QualityParams

    p.add_argument("scene", help="scene COG (uint16, band descriptions = band ids)")
    p.add_argument("--model", required=True, help="model .safetensors (with its .json)")
    p.add_argument(
        "--out", action=_OutputPath, required=True, help="probability COG to write (uint8, p x 254, nodata 255)"
    )
    p.add_argument("--pseudo-out", action=_OutputPath, help="also write the pseudo-class QA map here")
    p.add_argument(
        "--quality-mask",
        help="uint8 quality mask on the scene grid (default: the one `pixeldino fetch` wrote beside the scene, if any)",
    )
    add_dataclass_options(p, PredictParams, aliases={"num_threads": ("--threads",)})
    add_dataclass_options(p, QualityParams, include=("nodata_classes",))


def _polygonize_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino polygonize``."""
    from pixeldino.polygonize import PolygonizeParams
    from pixeldino.quality import WaterParams

    p.add_argument("prob")
    p.add_argument("--out", action=_OutputPath, required=True)
    p.add_argument("--quality-mask", help="the scene's quality mask: per-class fractions per polygon")
    add_dataclass_options(p, PolygonizeParams, aliases={"min_area_m2": ("--min-area",)})
    add_dataclass_options(p, WaterParams, prefix="water-", aliases={"file": ("--permanent-water",)})


def _merge_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino merge``."""
    from pixeldino.merge import MergeParams

    # '*', not '+': no input is refused by run_merge in one `error:` line like every other bad input
    p.add_argument("inputs", nargs="*", help="per-scene GeoPackages")
    p.add_argument("--out", action=_OutputPath, required=True)
    p.add_argument("--parquet", action=_OutputPath, help="also write GeoParquet here")
    add_dataclass_options(p, MergeParams)


def _coregister_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino coregister``."""
    from pixeldino.change import ChangeParams

    p.add_argument("scenes", nargs="+", help="fetched scene COGs of one MGRS tile, any years")
    p.add_argument("--out", action=_OutputPath, required=True, help="per-tile co-registration JSON to write")
    add_dataclass_options(
        p, ChangeParams, include=("coregistration_band",), aliases={"coregistration_band": ("--band",)}
    )


def _change_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino change`` (the merge settings with the prefix ``merge-``)."""
    from pixeldino.change import ChangeParams
    from pixeldino.merge import MergeParams

    p.add_argument("inputs", nargs="+", help="per-scene GeoPackages of all years")
    p.add_argument(
        "--out", action=_OutputPath, required=True, help="GeoPackage: layers rts_<year>, rts_tracks, rts_track_links"
    )
    p.add_argument("--years", type=int, nargs="*", help="years to map (default: those found)")
    p.add_argument("--coregistration", nargs="*", default=[], help="per-tile JSON from `pixeldino coregister`")
    p.add_argument("--tracks-parquet", action=_OutputPath, help="also write the tracks as GeoParquet")
    p.add_argument(
        "--years-parquet", action=_OutputPath, help="also write all year layers as one GeoParquet (column year)"
    )
    p.add_argument("--change-png", action=_OutputPath, help="change map PNG")
    p.add_argument("--growth-png", action=_OutputPath, help="growth distribution PNG")
    add_dataclass_options(p, ChangeParams, exclude=("coregistration_band",))
    add_dataclass_options(
        p,
        MergeParams,
        prefix="merge-",
        aliases={"crs": ("--crs",), "geometry": ("--geometry",), "min_overlap": ("--merge-overlap",)},
    )


def _catalog_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino catalog``."""
    p.add_argument("--out", action=_OutputPath, help="catalog folder to write (catalog.json inside)")
    p.add_argument("--run", help="run name: collection pixeldino-<run>")
    p.add_argument("--sidecars", nargs="*", help="scene JSON sidecars from fetch, one per scene")
    p.add_argument("--probabilities", nargs="*", help="probability COGs, in the order of --sidecars")
    p.add_argument("--pseudo", nargs="*", help="pseudo-class maps, same order")
    p.add_argument("--polygons", nargs="*", help="per-scene polygons, same order")
    p.add_argument("--merged", help="merged GeoPackage")
    p.add_argument("--merged-parquet", help="merged GeoParquet")
    p.add_argument("--change", help="rts_change.gpkg")
    p.add_argument("--tracks-parquet", help="tracks GeoParquet")
    p.add_argument("--model-card", help="model card (model.stac.json) of the model that made the predictions")
    p.add_argument("--validate", metavar="CATALOG", help="only validate this catalog.json")
    p.add_argument("--schemas", help="folder of extension schema files <name>-<version>.json for full validation")


def _card_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino card``."""
    p.add_argument("model", help="the model (.safetensors, its .json) or its card (.stac.json)")
    p.add_argument("--schemas", help="folder of extension schema files <name>-<version>.json for full validation")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino evaluate``."""
    p.add_argument("--prediction", required=True, help="probability raster")
    p.add_argument("--labels", required=True)
    p.add_argument("--aoi", help="restrict to this area")
    p.add_argument("--image", help="scene COG for the quicklook background")
    p.add_argument("--site", default="site")
    p.add_argument("--threshold", type=float)
    p.add_argument("--quicklook", action=_OutputPath, help="PNG to write")
    p.add_argument("--out", action=_OutputPath, required=True, help="metrics JSON")


def _config_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pixeldino config``."""
    p.add_argument("config", nargs="*", default=["config/config.yaml"])


#: Every verb: its handler, its help line and the function that adds its options (which imports its stage's
#: parameter dataclasses, so only the verb being run pays for them: predict and train import torch).
VERBS: dict[str, tuple[Handler, str, Callable[[argparse.ArgumentParser], None]]] = {
    "search": (
        commands.cmd_search,
        "Search a STAC catalog or API for Sentinel-2 scenes; write a scene manifest.",
        _search_options,
    ),
    "fetch": (
        commands.cmd_fetch,
        "Fetch the scenes of a manifest into 10 m multi-band COGs (skips completed ones).",
        _fetch_options,
    ),
    "chip": (commands.cmd_chip, "Cut labelled and unlabelled training chips into a zarr store.", _chip_options),
    "train": (
        commands.cmd_train,
        "Train a segmentation model (PixelDINO or a baseline); export the teacher or student.",
        _train_options,
    ),
    "predict": (
        commands.cmd_predict,
        "Sliding-window RTS probability over a whole scene (bounded memory).",
        _predict_options,
    ),
    "polygonize": (
        commands.cmd_polygonize,
        "Turn an RTS probability raster into polygons (GeoPackage layer 'rts').",
        _polygonize_options,
    ),
    "merge": (commands.cmd_merge, "Merge per-scene polygons into one deduplicated equal-area map.", _merge_options),
    "coregister": (
        commands.cmd_coregister,
        "Measure the sub-pixel shift of each scene of one tile against its reference scene (JSON sidecar).",
        _coregister_options,
    ),
    "change": (
        commands.cmd_change,
        "Per-year RTS maps and slump tracks (growth, status) from per-scene polygons of several years.",
        _change_options,
    ),
    "catalog": (
        commands.cmd_catalog,
        "Write (and validate offline) a STAC catalog of a run's outputs.",
        _catalog_options,
    ),
    "card": (
        commands.cmd_card,
        "Check a model's card (STAC item, MLM extension) offline and summarise it.",
        _card_options,
    ),
    "evaluate": (
        commands.cmd_evaluate,
        "Pixel and object metrics of a prediction against label polygons.",
        _evaluate_options,
    ),
    "config": (
        commands.cmd_config,
        "Validate workflow config files (later ones overlay earlier ones, as with "
        "snakemake --configfile) and print the effective config the workflow runs, defaults filled in.",
        _config_options,
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``pixeldino`` argument parser; stage settings are generated from the parameter dataclasses.

    Args:
        only: add the options of this verb only (the others are listed, without options); None: every verb's.
            Building a verb's options imports its stage, so ``main`` builds just the verb it runs.
    """
    parser = argparse.ArgumentParser(
        prog="pixeldino",
        description="Map retrogressive thaw slumps in Sentinel-2 imagery with PixelDINO. "
        "Each verb runs one stage; `snakemake` chains them (see README).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pixeldino {__version__}")
    parser.add_argument("--log", metavar="FILE", help="also write the log to FILE")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (func, help_text, add_options) in VERBS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        p.set_defaults(func=func)
        if only is None or only == name:
            add_options(p)
    return parser


def _verb_in(argv: list[str]) -> str:
    """The verb of a command line (its first word that is not an option or the value of ``--log``); '' if none."""
    words = iter(argv)
    for word in words:
        if word == "--log":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in VERBS else ""
    return ""


def main(argv: list[str] | None = None) -> int:
    """Run the verb of ``argv`` (default: ``sys.argv[1:]``) as a stage; a refused option is one ``error:`` line."""
    from pixeldino.errors import PixeldinoError
    from pixeldino.runner import run_stage

    words = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(only=_verb_in(words)).parse_args(words)
    except PixeldinoError as exc:  # an option's value refused while parsing (e.g. an unknown band in --bands)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    run_stage(
        args.verb, lambda: args.func(args), [args.log] if args.log else None, outputs=getattr(args, "outputs", None)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
