"""Offline validation of STAC objects: catalogs of a run (:mod:`pixeldino.catalog`) and model cards.

Validation (:func:`validate_catalog`, :func:`validate_stac_file`) runs pystac's JSON-schema validation offline.
pystac ships the core STAC schemas (item, catalog, collection, GeoJSON) but fetches extension schemas from
stac-extensions.github.io; without network those cannot be fetched, so extension fields are then checked by
:func:`check_extension_fields` against the rules of the extension versions pixeldino writes (projection v2.0.0,
raster v1.1.0, processing v1.2.0, and for model cards MLM v1.4.0). Give ``schema_dir`` (a folder of downloaded
extension ``schema.json`` files, named ``<extension>-<version>.json``, e.g. ``projection-v2.0.0.json``) to validate
extensions against the official schemas offline as well.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pystac

from pixeldino.errors import InputError, first_line
from pixeldino.io import read_json

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EXTENSIONS = (PROJECTION, RASTER, PROCESSING)
#: The Machine Learning Model extension of model cards (:mod:`pixeldino.modelcard`).
MLM = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
#: Every extension whose fields :func:`check_extension_fields` checks offline.
CHECKED_EXTENSIONS = (*EXTENSIONS, MLM)
_DATA_TYPES = {
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "cint16",
    "cint32",
    "cfloat32",
    "cfloat64",
    "other",
}


def _is_number_list(value: Any, lengths: tuple[int, ...]) -> bool:
    """A list of ``lengths`` (one of them) numbers, booleans excluded."""
    return (
        isinstance(value, list)
        and len(value) in lengths
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


# MLM v1.4.0 (https://github.com/stac-extensions/mlm/tree/v1.4.0): the rules of its JSON schema that apply to
# the fields pixeldino writes, for validation without network
_MLM_TASKS = {
    "regression", "classification", "scene-classification", "detection", "object-detection", "segmentation",
    "semantic-segmentation", "instance-segmentation", "panoptic-segmentation", "similarity-search", "generative",
    "image-captioning", "super-resolution",
}  # fmt: skip
_MLM_ACCELERATORS = {"amd64", "cuda", "xla", "amd-rocm", "intel-ipex-cpu", "intel-ipex-gpu", "macos-arm"}
_MLM_RESIZE = {
    "crop", "pad", "interpolation-nearest", "interpolation-linear", "interpolation-cubic", "interpolation-area",
    "interpolation-lanczos4", "interpolation-max", "wrap-fill-outliers", "wrap-inverse-map",
}  # fmt: skip
#: ``value_scaling`` types and the properties each needs.
_MLM_SCALING = {
    "min-max": ("minimum", "maximum"), "z-score": ("mean", "stddev"), "clip": ("minimum", "maximum"),
    "clip-min": ("minimum",), "clip-max": ("maximum",), "offset": ("value",), "scale": ("value",),
    "processing": ("format", "expression"),
}  # fmt: skip
#: Fields that describe the model as a whole: Item properties only, never an Asset.
_MLM_ITEM_ONLY = {"mlm:name", "mlm:input", "mlm:output", "mlm:hyperparameters"}
_MLM_SHARED = {
    "mlm:architecture", "mlm:tasks", "mlm:framework", "mlm:framework_version", "mlm:memory_size",
    "mlm:total_parameters", "mlm:pretrained", "mlm:pretrained_source", "mlm:batch_size_suggestion",
    "mlm:accelerator", "mlm:accelerator_constrained", "mlm:accelerator_summary", "mlm:accelerator_count",
}  # fmt: skip
_MLM_ASSET_ONLY = {"mlm:artifact_type", "mlm:compile_method", "mlm:entrypoint"}
_MLM_REQUIRED = ("mlm:name", "mlm:architecture", "mlm:tasks", "mlm:input", "mlm:output")
_MLM_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_DIMENSION = re.compile(r"^[a-z-_]+$")
_HYPERPARAMETER = re.compile(r"^[0-9a-zA-Z_.-]+$")
_CLASS_NAME = re.compile(r"^[0-9A-Za-z-_]+$")
_COLOR_HINT = re.compile(r"^[0-9A-Fa-f]{6}$")


def _is_count(value: Any, minimum: int = 0) -> bool:
    """An integer (not a boolean) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _mlm_expression(where: str, value: Any) -> list[str]:
    """A processing expression (``format`` + ``expression``) or null."""
    if value is None or (isinstance(value, dict) and isinstance(value.get("format"), str) and "expression" in value):
        return []
    return [f"{where} must be null or an object with format and expression"]


def _mlm_structure(where: str, value: Any) -> list[str]:
    """An Input or Result Structure Object: shape, dim_order and data_type that agree with each other."""
    if not isinstance(value, dict):
        return [f"{where} must be an object with shape, dim_order and data_type"]
    problems = []
    shape, order = value.get("shape"), value.get("dim_order")
    if not (isinstance(shape, list) and shape and all(_is_count(v, -1) for v in shape)):
        problems.append(f"{where}.shape must be a non-empty list of integers >= -1")
    if not (
        isinstance(order, list)
        and order
        and all(isinstance(d, str) and _DIMENSION.match(d) for d in order)
        and len(set(order)) == len(order)
    ):
        problems.append(f"{where}.dim_order must be distinct lower-case dimension names")
    elif isinstance(shape, list) and len(shape) != len(order):
        problems.append(f"{where}: shape and dim_order differ in length")
    if value.get("data_type") not in _DATA_TYPES:
        problems.append(f"{where}.data_type {value.get('data_type')!r} is not a STAC data type")
    return problems


def _mlm_tasks(where: str, value: Any) -> list[str]:
    """A list of distinct MLM task names (``mlm:tasks``, a Model Output Object's ``tasks``)."""
    if isinstance(value, list) and value and all(t in _MLM_TASKS for t in value) and len(set(value)) == len(value):
        return []
    return [f"{where} must be distinct MLM tasks (e.g. semantic-segmentation), got {value!r}"]


def _mlm_input(where: str, value: Any) -> list[str]:
    """A Model Input Object (``mlm:input`` entry): name, bands, input structure, value scaling, resizing
    and pre-processing."""
    if not isinstance(value, dict):
        return [f"{where} must be a Model Input Object"]
    problems = []
    if not (isinstance(value.get("name"), str) and value["name"]):
        problems.append(f"{where}.name must be a non-empty string")
    bands = value.get("bands")
    if not (isinstance(bands, list) and all(isinstance(b, str) or isinstance(b, dict) and "name" in b for b in bands)):
        problems.append(f"{where}.bands must be a list of band names (or objects with a name)")
    problems += _mlm_structure(f"{where}.input", value.get("input"))
    scaling = value.get("value_scaling")
    if scaling is not None:
        if not (isinstance(scaling, list) and scaling):
            problems.append(f"{where}.value_scaling must be null or a non-empty list")
        else:
            for j, entry in enumerate(scaling):
                kind = entry.get("type", "-") if isinstance(entry, dict) else "-"
                if kind is not None and (kind not in _MLM_SCALING or any(k not in entry for k in _MLM_SCALING[kind])):
                    problems.append(f"{where}.value_scaling[{j}]: type {kind!r} lacks its values or is unknown")
    if value.get("resize_type") is not None and value["resize_type"] not in _MLM_RESIZE:
        problems.append(f"{where}.resize_type {value['resize_type']!r} is not an MLM resize type")
    return problems + _mlm_expression(f"{where}.pre_processing_function", value.get("pre_processing_function"))


def _mlm_output(where: str, value: Any) -> list[str]:
    """A Model Output Object (``mlm:output`` entry): name, tasks, result structure, classes and
    post-processing."""
    if not isinstance(value, dict):
        return [f"{where} must be a Model Output Object"]
    problems = []
    if not (isinstance(value.get("name"), str) and value["name"]):
        problems.append(f"{where}.name must be a non-empty string")
    problems += _mlm_tasks(f"{where}.tasks", value.get("tasks"))
    problems += _mlm_structure(f"{where}.result", value.get("result"))
    for j, cls in enumerate(value.get("classification:classes", [])):
        if not (
            isinstance(cls, dict)
            and _is_count(cls.get("value"))
            and isinstance(cls.get("name"), str)
            and _CLASS_NAME.match(cls["name"])
            and ("color_hint" not in cls or isinstance(cls["color_hint"], str) and _COLOR_HINT.match(cls["color_hint"]))
        ):
            problems.append(f"{where}.classification:classes[{j}] needs an integer value, a name and a RRGGBB hint")
    return problems + _mlm_expression(f"{where}.post_processing_function", value.get("post_processing_function"))


def _mlm_band_names(asset: dict[str, Any]) -> set[str]:
    """Band names an asset defines (STAC 1.1 ``bands``, ``raster:bands`` or ``eo:bands``)."""
    names = set()
    for key in ("bands", "raster:bands", "eo:bands"):
        for band in asset.get(key) or []:
            if isinstance(band, dict) and isinstance(band.get("name"), str):
                names.add(band["name"])
    return names


def _mlm_problems(obj: dict[str, Any]) -> list[str]:
    """Problems with the MLM fields of one STAC item dict (Machine Learning Model extension v1.4.0)."""
    props = obj.get("properties", {})
    assets = obj.get("assets", {})
    problems = [f"properties: {k} is required by MLM" for k in _MLM_REQUIRED if k not in props]
    unknown = [k for k in props if k.startswith("mlm:") and k not in _MLM_ITEM_ONLY | _MLM_SHARED]
    problems += [f"properties: {k} is not an MLM item field" for k in unknown]
    if "mlm:name" in props and not (isinstance(props["mlm:name"], str) and _MLM_NAME.match(props["mlm:name"])):
        problems.append(f"properties: mlm:name {props['mlm:name']!r} must be a name of letters, digits, _ . -")
    if "mlm:architecture" in props and not isinstance(props["mlm:architecture"], str):
        problems.append("properties: mlm:architecture must be a string")
    if "mlm:tasks" in props:
        problems += _mlm_tasks("properties: mlm:tasks", props["mlm:tasks"])
    for where, fields in [("properties", props)] + [(f"assets.{k}", a) for k, a in assets.items()]:
        if "mlm:framework" in fields and not (isinstance(fields["mlm:framework"], str) and fields["mlm:framework"]):
            problems.append(f"{where}: mlm:framework must be a non-empty string")
        version = fields.get("mlm:framework_version")
        if version is not None and not (isinstance(version, str) and _SEMVER.match(version)):
            problems.append(f"{where}: mlm:framework_version {version!r} must be a semantic version")
        for key in ("mlm:memory_size", "mlm:total_parameters", "mlm:batch_size_suggestion"):
            if key in fields and not _is_count(fields[key]):
                problems.append(f"{where}: {key} must be a non-negative integer")
        if "mlm:accelerator_count" in fields and not _is_count(fields["mlm:accelerator_count"], 1):
            problems.append(f"{where}: mlm:accelerator_count must be a positive integer")
        if fields.get("mlm:accelerator") is not None and fields["mlm:accelerator"] not in _MLM_ACCELERATORS:
            problems.append(f"{where}: mlm:accelerator {fields['mlm:accelerator']!r} is not an MLM accelerator")
        for key in ("mlm:pretrained", "mlm:accelerator_constrained"):
            if key in fields and not isinstance(fields[key], bool):
                problems.append(f"{where}: {key} must be true or false")
        if fields.get("mlm:pretrained") is False and fields.get("mlm:pretrained_source", "-") is not None:
            problems.append(f"{where}: a model trained from scratch needs mlm:pretrained_source null")
        source = fields.get("mlm:pretrained_source")
        if source is not None and not isinstance(source, str):
            problems.append(f"{where}: mlm:pretrained_source must be a string or null")
    inputs, outputs = props.get("mlm:input"), props.get("mlm:output")
    if "mlm:input" in props and not (isinstance(inputs, list) and inputs):
        problems.append("properties: mlm:input must be a non-empty list")
    if "mlm:output" in props and not (isinstance(outputs, list) and outputs):
        problems.append("properties: mlm:output must be a non-empty list")
    for i, value in enumerate(inputs if isinstance(inputs, list) else []):
        problems += _mlm_input(f"properties: mlm:input[{i}]", value)
    for i, value in enumerate(outputs if isinstance(outputs, list) else []):
        problems += _mlm_output(f"properties: mlm:output[{i}]", value)
    hyper = props.get("mlm:hyperparameters")
    if hyper is not None and not (isinstance(hyper, dict) and hyper and all(_HYPERPARAMETER.match(k) for k in hyper)):
        problems.append("properties: mlm:hyperparameters must be a non-empty object with plain names")
    models = []
    for key, asset in assets.items():
        roles = asset.get("roles") or []
        asset_fields = _MLM_SHARED | _MLM_ASSET_ONLY
        misplaced = sorted(k for k in asset if k.startswith("mlm:") and k not in asset_fields)
        problems += [f"assets.{key}: {k} is not allowed in an asset" for k in misplaced]
        if "mlm:model" in roles:
            models.append(asset)
            if not (isinstance(asset.get("mlm:artifact_type"), str) and asset["mlm:artifact_type"]):
                problems.append(f"assets.{key}: an mlm:model asset needs mlm:artifact_type")
        elif "mlm:artifact_type" in asset:
            problems.append(f"assets.{key}: mlm:artifact_type belongs to an asset with role mlm:model")
    if not models:
        problems.append("assets: no asset has the role mlm:model")
    # band names an input refers to must be defined by a model asset (STAC 1.1 bands, raster:bands or eo:bands)
    defined = set().union(*(_mlm_band_names(a) for a in models)) if models else set()
    for i, value in enumerate(inputs if isinstance(inputs, list) else []):
        bands = value.get("bands") if isinstance(value, dict) else None
        refs = [b if isinstance(b, str) else b.get("name") for b in bands or [] if isinstance(b, (str, dict))]
        missing = [b for b in refs if b not in defined]
        if missing:
            problems.append(f"properties: mlm:input[{i}] bands {missing} are not defined by the mlm:model asset")
    return problems


def check_extension_fields(obj: dict[str, Any]) -> list[str]:
    """Problems with the projection/raster/processing/MLM fields of one STAC item dict (empty list = valid)."""
    problems = []
    if MLM in obj.get("stac_extensions", []) or any(k.startswith("mlm:") for k in obj.get("properties", {})):
        problems += _mlm_problems(obj)
    props = obj.get("properties", {})
    sources = [("properties", props)] + [(f"assets.{k}", a) for k, a in obj.get("assets", {}).items()]
    for where, fields in sources:
        if "proj:code" in fields and not (fields["proj:code"] is None or isinstance(fields["proj:code"], str)):
            problems.append(f"{where}: proj:code must be a string or null")
        if "proj:shape" in fields and not (
            _is_number_list(fields["proj:shape"], (2,))
            and all(isinstance(v, int) and v >= 0 for v in fields["proj:shape"])
        ):
            problems.append(f"{where}: proj:shape must be two non-negative integers")
        if "proj:transform" in fields and not _is_number_list(fields["proj:transform"], (6, 9)):
            problems.append(f"{where}: proj:transform must be 6 or 9 numbers")
        if "proj:bbox" in fields and not _is_number_list(fields["proj:bbox"], (4, 6)):
            problems.append(f"{where}: proj:bbox must be 4 or 6 numbers")
        for band in fields.get("raster:bands", []) if isinstance(fields.get("raster:bands", []), list) else [None]:
            if not isinstance(band, dict):
                problems.append(f"{where}: raster:bands must be a list of objects")
                continue
            if "data_type" in band and band["data_type"] not in _DATA_TYPES:
                problems.append(f"{where}: raster:bands data_type {band['data_type']!r} is not a STAC data type")
            for key in ("nodata", "scale", "offset"):
                if key in band and not isinstance(band[key], (int, float, str)):
                    problems.append(f"{where}: raster:bands {key} must be a number")
    software = props.get("processing:software")
    if software is not None and not (isinstance(software, dict) and all(isinstance(v, str) for v in software.values())):
        problems.append("properties: processing:software must map names to version strings")
    if "processing:lineage" in props and not isinstance(props["processing:lineage"], str):
        problems.append("properties: processing:lineage must be a string")
    return problems


def _offline_validator(schema_dir: str | os.PathLike[str] | None = None) -> Any:
    """A pystac validator that never goes to the network: core schemas as pystac ships them, extension schemas
    from ``schema_dir`` (files ``<name>-<version>.json``), else :func:`check_extension_fields`."""
    from pystac.validation import JsonSchemaSTACValidator
    from pystac.validation.stac_validator import GetSchemaError

    local: dict[str, dict[str, Any]] = {}
    if schema_dir is not None:
        for path in Path(schema_dir).glob("*.json"):
            name, _, version = path.stem.rpartition("-")
            local[f"https://stac-extensions.github.io/{name}/{version}/schema.json"] = json.loads(path.read_text())

    class OfflineValidator(JsonSchemaSTACValidator):
        """pystac's JSON-schema validator with the local extension schemas and no network access."""

        def __init__(self) -> None:
            """The validator with ``local``'s schemas in its cache."""
            super().__init__()
            self.schema_cache.update(local)

        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            """A schema from the cache or pystac's shipped ones; never fetched from the network."""
            if schema_uri not in self.schema_cache and schema_uri.startswith("http"):
                # never go to the network: an unknown schema is a GetSchemaError, handled below
                raise GetSchemaError(schema_uri, OSError("offline: schema not shipped"))
            return super()._get_schema(schema_uri)

        def validate_extension(
            self,
            stac_dict: dict[str, Any],
            stac_object_type: Any,
            stac_version: str,
            extension_id: str,
            href: str | None = None,
        ) -> Any:
            """Validate against the extension's schema when it is at hand, else by
            :func:`check_extension_fields`."""
            if extension_id in self.schema_cache:
                return super().validate_extension(stac_dict, stac_object_type, stac_version, extension_id, href)
            if extension_id not in CHECKED_EXTENSIONS:
                raise InputError(
                    f"{href}: extension {extension_id} has no offline check; give its schema in schema_dir"
                )
            problems = check_extension_fields(stac_dict)
            if problems:
                raise InputError(f"{href}: {problems[0]} ({extension_id})")
            return extension_id

    return OfflineValidator()


def validate_stac_file(
    path: str | os.PathLike[str], schema_dir: str | os.PathLike[str] | None = None, *, validator: Any = None
) -> bool:
    """Validate one STAC JSON file offline (as :func:`validate_catalog` does each of a catalog's objects).

    Returns:
        True when the file is a STAC catalog, collection or item (and valid); False for other JSON.

    Raises:
        InputError: the file is missing or not valid STAC, naming the problem.
    """
    p = Path(path)
    data = read_json(p)
    if not isinstance(data, dict) or data.get("type") not in ("Catalog", "Collection", "Feature"):
        return False
    try:
        pystac.validation.validate_dict(data, href=str(p), validator=validator or _offline_validator(schema_dir))
    except pystac.errors.STACValidationError as exc:
        raise InputError(f"{p}: not valid STAC ({first_line(exc)})") from None
    return True


def validate_catalog(catalog_json: str | os.PathLike[str], schema_dir: str | os.PathLike[str] | None = None) -> int:
    """Validate every object of a catalog offline; returns the number of objects validated.

    Core STAC (catalog, collection, item, GeoJSON) is validated by pystac against the schemas it ships.
    Extension schemas are taken from ``schema_dir`` when given (files ``<name>-<version>.json``), else the
    extension fields are checked by :func:`check_extension_fields`.

    Raises:
        InputError: the first invalid object, naming its file and the problem.
    """
    root = Path(catalog_json)
    if not root.exists():
        raise InputError(f"{root}: catalog not found; run `pixeldino catalog` first")
    validator = _offline_validator(schema_dir)
    return sum(validate_stac_file(path, validator=validator) for path in sorted(root.parent.rglob("*.json")))
