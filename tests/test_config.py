"""Workflow configuration: schema defaults, one-line errors, file checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pixeldino.config import load_config, load_yaml, validate_config
from pixeldino.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_empty_config_gets_every_default() -> None:
    cfg = validate_config({}, check_files=False)
    assert cfg["run"] == "demo"
    assert cfg["train"]["mode"] == "pixeldino"
    assert cfg["train"]["beta"] == 0.1
    assert cfg["chips"]["size"] == 64
    assert cfg["predict"]["overlap"] == 0.25
    assert cfg["merge"]["crs"] == "EPSG:3413"


def test_partial_sections_are_completed_and_values_kept() -> None:
    cfg = validate_config({"train": {"steps": 7}, "bands": ["blue", "green", "red"]}, check_files=False)
    assert cfg["train"]["steps"] == 7
    assert cfg["train"]["lr"] == 0.001
    assert cfg["bands"] == ["B02", "B03", "B04"]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"train": {"steps": -5}}, "train.steps: -5 is less than the minimum of 1"),
        ({"train": {"mode": "dino"}}, "train.mode: 'dino' is not one of"),
        ({"chips": {"size": 50}}, "chips.size: 50 is not a multiple of 16"),
        ({"search": {"datetime": "July 2021"}}, "search.datetime: 'July 2021' does not match"),
        ({"trian": {}}, "'trian' was unexpected"),
        ({"evaluate": {"sites": [{"name": "x"}]}}, "evaluate.sites.0: 'labels' is a required property"),
    ],
)
def test_invalid_values_give_one_line_naming_the_key(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(copy.deepcopy(patch), source="my.yaml", check_files=False)
    text = str(info.value)
    assert text.startswith("my.yaml: ") and message in text
    assert "\n" not in text


def test_missing_label_file_is_reported_with_its_key(tmp_path) -> None:
    cfg = {"stac": {"catalog": str(tmp_path)}, "labels": {"file": "nowhere/rts.gpkg", "footprint": None, "holdout": None}}
    with pytest.raises(ConfigError, match=r"labels.file: file nowhere/rts.gpkg does not exist; fix the path"):
        validate_config(cfg)


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "config").rglob("*.yaml")):
        cfg = load_yaml(path)
        if path.parent.name == "test":  # test configs are overlays on the default
            base = load_yaml(ROOT / "config" / "config.yaml")
            base.update(cfg)
            cfg = base
        validate_config(cfg, source=str(path), check_files=False)


def test_load_config_reports_bad_yaml(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    assert yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["run"] == "demo"
