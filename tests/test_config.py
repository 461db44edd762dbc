"""Workflow configuration: schema defaults, one-line errors, file checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pixeldino.config import load_config, load_yaml, validate_config
from pixeldino.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


#: The smallest config a user writes: where scenes come from, where to look, the labels.
MINIMAL = {"stac": {"provider": "earth-search"}, "search": {"aoi": [-136.0, 67.9, -135.5, 68.2]}}


def minimal(**sections: object) -> dict:
    """MINIMAL with ``sections`` merged in (a mapping updates its section, anything else replaces the key)."""
    cfg = copy.deepcopy(MINIMAL)
    for name, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(name, {}).update(value)
        else:
            cfg[name] = value
    return cfg


def test_minimal_config_gets_every_default_and_nothing_of_the_demo() -> None:
    cfg = validate_config(minimal(), configfiles=["configs/arctic_2024.yaml"], check_files=False)
    assert cfg["run"] == "arctic_2024"  # named after its file
    assert cfg["train"]["mode"] == "pixeldino"
    assert cfg["train"]["beta"] == 0.1
    assert cfg["chips"]["size"] == 64
    assert cfg["predict"]["overlap"] == 0.25
    assert cfg["merge"]["crs"] == "EPSG:3413"
    assert cfg["labels"] == {"file": None, "footprint": None, "holdout": None}
    assert cfg["evaluate"]["sites"] == [] and cfg["stac"]["catalog"] is None
    assert "demo" not in yaml.safe_dump(cfg)


def test_a_config_needs_a_name_and_somewhere_to_look() -> None:
    with pytest.raises(ConfigError, match="no run name"):
        validate_config(minimal(), check_files=False)
    with pytest.raises(ConfigError, match="search: give search.aoi"):
        validate_config({"run": "x", "stac": {"provider": "earth-search"}}, check_files=False)
    with pytest.raises(ConfigError, match="stac.catalog: provider local needs a catalog"):
        validate_config({"run": "x", "stac": {"provider": "local"}, "search": {"tiles": ["08WMA"]}}, check_files=False)


def test_partial_sections_are_completed_and_values_kept() -> None:
    cfg = validate_config(minimal(run="x", train={"steps": 7}) | {"bands": ["blue", "green", "red"]}, check_files=False)
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
        validate_config(minimal(run="x") | copy.deepcopy(patch), source="my.yaml", check_files=False)
    text = str(info.value)
    assert text.startswith("my.yaml: ") and message in text
    assert "\n" not in text


def test_missing_label_file_is_reported_with_its_key(tmp_path) -> None:
    cfg = {
        "run": "x",
        "stac": {"catalog": str(tmp_path)},
        "search": {"tiles": ["08WMA"]},
        "labels": {"file": "nowhere/rts.gpkg", "footprint": None, "holdout": None},
    }
    with pytest.raises(ConfigError, match=r"labels.file: file nowhere/rts.gpkg does not exist; fix the path"):
        validate_config(cfg)


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "config").rglob("*.yaml")):
        # test configs are overlays on the demo, as in `snakemake --configfile config/config.yaml config/test/x.yaml`
        paths = [ROOT / "config" / "config.yaml", path] if path.parent.name == "test" else [path]
        cfg = load_config(*paths, check_files=False)
        assert cfg["run"] == load_yaml(path).get("run", path.stem)


def test_load_config_reports_bad_yaml(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    assert yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["run"] == "demo"


def test_stac_search_fetch_defaults() -> None:
    cfg = validate_config(minimal(run="x"), check_files=False)
    assert cfg["stac"] == {"provider": "earth-search", "catalog": None, "collection": None}
    assert cfg["search"]["years"] == []
    assert cfg["search"]["months"] == [7, 8] and cfg["search"]["max_snow_cover"] == 100
    assert cfg["fetch"]["harmonize"] is True and cfg["fetch"]["quality_mask"] is True
    assert cfg["fetch"]["composite"] == "none" and cfg["fetch"]["clip_to_aoi"] is False
    demo = load_config(ROOT / "config" / "config.yaml")
    assert demo["stac"]["provider"] is None and demo["stac"]["collection"] == "sentinel-2-l1c"  # local: inferred


def test_real_run_settings_validate() -> None:
    cfg = validate_config(
        {
            "run": "x",
            "stac": {"provider": "earth-search"},
            "search": {
                "aoi": [-136.0, 67.9, -135.5, 68.2],
                "years": [2021, 2023],
                "months": [7, 8],
                "max_cloud_cover": 10,
                "max_snow_cover": 5,
            },
            "fetch": {"harmonize": True, "composite": "median"},
        },
        check_files=False,
    )
    assert cfg["search"]["aoi"] == [-136.0, 67.9, -135.5, 68.2] and cfg["stac"]["collection"] is None
    assert (
        validate_config(minimal(run="x", search={"aoi": "circumpolar"}), check_files=False)["search"]["aoi"]
        == "circumpolar"
    )


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"stac": {"provider": "sentinel-hub"}}, "stac.provider: 'sentinel-hub' is not one of"),
        ({"search": {"months": [13]}}, "search.months.0: 13 is greater than the maximum of 12"),
        ({"search": {"max_snow_cover": 120}}, "search.max_snow_cover: 120 is greater than the maximum of 100"),
        ({"fetch": {"composite": "mean"}}, "fetch.composite: 'mean' is not one of"),
        ({"search": {"aoi": [1, 2, 3]}}, "search.aoi"),
    ],
)
def test_invalid_stac_search_fetch_values(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(minimal(run="x") | copy.deepcopy(patch), source="my.yaml", check_files=False)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("aoi", [[-140.0, 68.0, -135.0, 70.0], "circumpolar"])
def test_non_file_aois_pass_the_file_check(aoi) -> None:
    cfg = validate_config(minimal(run="x", search={"aoi": aoi}), check_files=False)
    from pixeldino.config import check_input_files

    cfg["labels"]["file"] = None
    cfg["train"]["model"] = None
    with pytest.raises(ConfigError, match="training needs labels"):
        check_input_files(cfg)  # the AOI itself is not looked up as a file
