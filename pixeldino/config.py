"""Workflow configuration: JSON-Schema validation with defaults, and one-line errors.

The schema is ``pixeldino/data/config.schema.yaml``, generated from the stage parameter dataclasses by
:mod:`pixeldino.schema`; :func:`validate_config` fills in the schema defaults
(recursively, so a partial config is complete afterwards) and turns the first violation into a
:class:`~pixeldino.errors.ConfigError` such as ``config/config.yaml: train.steps: -5 is less than the minimum of 1``.
It also checks that every input file the config names exists, so a typo fails before any job starts.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from pixeldino.bands import canonical_bands
from pixeldino.errors import ConfigError
from pixeldino.schema import schema_path

#: The config schema shipped in the package (generated from the parameter dataclasses, see pixeldino.schema).
DEFAULT_SCHEMA = schema_path()


def _extend_with_defaults(validator_class: Any) -> Any:
    """A validator that writes ``default`` values into the instance while validating (jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Iterable[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _extend_with_defaults(Draft202012Validator)


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}; fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    return data


def _location(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(
    config: dict[str, Any],
    schema_path: str | os.PathLike[str] = DEFAULT_SCHEMA,
    *,
    source: str = "config",
    configfiles: Sequence[str | os.PathLike[str]] = (),
    check_files: bool = True,
) -> dict[str, Any]:
    """Validate ``config`` in place against the schema, fill in defaults, and return it.

    This is the one computation of the effective config: the Snakefile and ``pixeldino config`` both call it.

    Args:
        config: the configuration mapping (e.g. Snakemake's ``config``); modified in place.
        schema_path: the JSON schema (YAML).
        source: name shown in error messages (usually the config file).
        configfiles: the config files ``config`` was read from; a config without ``run`` is named after the last.
        check_files: also check that input files named in the config exist.

    Raises:
        ConfigError: on the first (most relevant) violation, as one line.
    """
    if "run" not in config and configfiles:
        config["run"] = Path(configfiles[-1]).stem
    if "run" not in config:
        raise ConfigError(f"{source}: run: no run name; set `run:` (outputs go to results/<run>/)")
    if "normalisation" in config:
        raise ConfigError(
            f"{source}: normalisation: moved to train.normalisation (e.g. train: {{normalisation: "
            "{method: zscore}}); move the section there"
        )
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _DefaultingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        err = errors[0]
        raise ConfigError(f"{source}: {_location(err)}: {err.message}")
    # a second pass: defaults set inside freshly defaulted sub-objects are validated too
    errors = list(validator.iter_errors(config))
    if errors:
        raise ConfigError(f"{source}: {_location(errors[0])}: {errors[0].message}")
    try:
        config["bands"] = canonical_bands(config["bands"])
    except ConfigError as exc:
        raise ConfigError(f"{source}: bands: {exc}") from None
    check_consistency(config, source=source)
    if check_files:
        check_input_files(config, source=source)
    return config


def check_consistency(config: dict[str, Any], *, source: str = "config") -> None:
    """Settings that are each valid but do not work together, as one line."""
    stac, search = config["stac"], config["search"]
    if stac["provider"] in ("local", "custom") and not stac["catalog"] and not search["manifest"]:
        raise ConfigError(
            f"{source}: stac.catalog: provider {stac['provider']} needs a catalog (a local "
            "catalog.json or a STAC API URL), or use a preset provider such as earth-search"
        )
    if search["aoi"] is None and not search["tiles"] and not search["manifest"]:
        raise ConfigError(
            f"{source}: search: give search.aoi (a vector file, a [W, S, E, N] bbox or 'circumpolar'), "
            "search.tiles or a pre-made search.manifest"
        )


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://", "s3://", "/vsicurl/"))


def check_input_files(config: dict[str, Any], *, source: str = "config") -> None:
    """Fail early, with the config key in the message, when a named input file does not exist."""
    aoi = config["search"]["aoi"]  # a file, or a bbox list, or the keyword "circumpolar"
    catalog = config["stac"]["catalog"] if config["stac"]["provider"] in ("local", "custom", None) else None
    named: list[tuple[str, str | None]] = [
        ("stac.catalog", catalog),
        ("search.aoi", aoi if isinstance(aoi, str) and aoi != "circumpolar" else None),
        ("search.manifest", config["search"].get("manifest")),
        ("labels.file", config["labels"]["file"]),
        ("labels.footprint", config["labels"]["footprint"]),
        ("labels.holdout", config["labels"]["holdout"]),
        ("train.model", config["train"]["model"]),
        ("train.init_from", config["train"].get("init_from")),
        ("quality.permanent_water.file", config.get("quality", {}).get("permanent_water", {}).get("file")),
    ]
    for i, site in enumerate(config["evaluate"]["sites"]):
        named.append((f"evaluate.sites[{i}].labels", site["labels"]))
        named.append((f"evaluate.sites[{i}].aoi", site.get("aoi")))
    for key, value in named:
        if value and not _is_url(value) and not Path(value).exists():
            hint = "fix the path" + (" or set it to null" if key != "stac.catalog" else "")
            raise ConfigError(f"{source}: {key}: file {value} does not exist; {hint}")
    if config["labels"]["file"] is None and config["train"]["model"] is None:
        raise ConfigError(f"{source}: labels.file is null and no train.model is given; training needs labels")


def merge_configs(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Update ``base`` with ``overlay`` recursively, as Snakemake does for several ``--configfile``s."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_configs(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config(
    *paths: str | os.PathLike[str], schema_path: str | os.PathLike[str] = DEFAULT_SCHEMA, check_files: bool = True
) -> dict[str, Any]:
    """Load one or more YAML config files (later ones overlay earlier ones) and validate them (defaults filled in)."""
    config: dict[str, Any] = {}
    for path in paths:
        merge_configs(config, load_yaml(path))
    return validate_config(config, schema_path, source=str(paths[-1]), configfiles=paths, check_files=check_files)
