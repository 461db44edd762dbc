"""One source of truth: the config schema and the CLI options derive from the stage parameter dataclasses."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pixeldino import cli, schema
from pixeldino.config import validate_config
from pixeldino.params import as_config, default_of, from_config, from_namespace, json_schema

SECTIONS = sorted(schema.SECTIONS)


def test_committed_schema_is_the_generated_one() -> None:
    """Fails when a dataclass default, type, choice or doc changed without `python -m pixeldino.schema`."""
    assert schema.schema_path().read_text() == schema.render(schema.generate())


@pytest.mark.parametrize("section", SECTIONS)
def test_schema_defaults_are_the_dataclass_defaults(section: str) -> None:
    cls = schema.params_class(section)
    given = {"search": {"tiles": ["08WMA"]}, "stac": {"provider": "earth-search"}}  # the least a config needs
    config = validate_config({"run": "x", **given}, check_files=False)
    params = as_config(from_config(cls, config[section]))
    defaults = as_config(cls())
    for key in given.get(section, {}):
        params.pop(key), defaults.pop(key)
    assert params == defaults  # the schema-filled config section == the dataclass defaults
    properties = json_schema(cls)["properties"]
    for f in dataclasses.fields(cls):
        default = default_of(f)
        expected = as_config(default) if dataclasses.is_dataclass(default) else default
        assert properties[f.name]["default"] == expected, f"{section}.{f.name}"
        assert properties[f.name].get("description"), f"{section}.{f.name} has no documentation"


def _namespace_after(verb: str, *args: str) -> argparse.Namespace:
    return cli.build_parser().parse_args([verb, *args])


#: verb -> (the arguments a minimal call needs, [(dataclass, option prefix), ...] generated into its options)
VERB_PARAMS = {
    "search": (["--out", "m.json"], [("search", ""), ("stac", "")]),
    "fetch": (["--manifest", "m.json", "--out-dir", "s"], [("fetch", "")]),
    "chip": (["--scenes", "a.tif", "--out", "c.zarr"], [("chips", "")]),
    "train": (["--chips", "c.zarr", "--out-dir", "m"], [("train", "")]),
    "predict": (["a.tif", "--model", "m.safetensors", "--out", "p.tif"], [("predict", "")]),
    "polygonize": (["p.tif", "--out", "r.gpkg"], [("polygonize", "")]),
    "merge": (["a.gpkg", "--out", "m.gpkg"], [("merge", "")]),
    "change": (["a.gpkg", "--out", "c.gpkg"], [("change", ""), ("merge", "merge-")]),
}


@pytest.mark.parametrize("verb", sorted(VERB_PARAMS))
def test_cli_defaults_are_the_dataclass_defaults(verb: str) -> None:
    """An option left out keeps the dataclass default: no verb writes a default of its own."""
    args, groups = VERB_PARAMS[verb]
    namespace = _namespace_after(verb, *args)
    for section, prefix in groups:
        cls = schema.params_class(section)
        assert as_config(from_namespace(cls, namespace, prefix=prefix)) == as_config(cls()), f"{verb}: {section}"


def test_cli_options_reach_the_dataclass() -> None:
    namespace = _namespace_after(
        "predict", "a.tif", "--model", "m", "--out", "p", "--batch-size", "3", "--tta", "--backend", "torch"
    )
    params = from_namespace(schema.params_class("predict"), namespace)
    assert (params.batch_size, params.tta, params.backend) == (3, True, "torch")
    namespace = _namespace_after("change", "a.gpkg", "--out", "c", "--min-overlap", "0.3", "--merge-min-overlap", "0.7")
    assert from_namespace(schema.params_class("change"), namespace).min_overlap == 0.3
    assert from_namespace(schema.params_class("merge"), namespace, prefix="merge-").min_overlap == 0.7
