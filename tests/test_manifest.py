"""Tests for pixeldino.manifest: the scene manifest's validation, scene selection and tile filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixeldino.errors import ConfigError, InputError
from pixeldino.manifest import manifest_scene, read_manifest, scenes_of_tiles, select_scenes, write_manifest


def _scene(scene_id: str, tile: str, **extra: object) -> dict:
    return {
        "id": scene_id,
        "tile": tile,
        "datetime": "2021-07-01T00:00:00+00:00",
        "crs": "EPSG:32608",
        "assets": {"B04": f"/data/{scene_id}/B04.tif"},
        **extra,
    }


def _manifest(*scenes: dict) -> dict:
    return {"pixeldino_manifest": 1, "provider": {"name": "earth-search"}, "scenes": list(scenes)}


def test_write_read_and_validate(tmp_path: Path) -> None:
    m = _manifest(_scene("s1", "08WMA"))
    path = write_manifest(m, tmp_path / "m.json")
    assert read_manifest(path) == m
    for bad, message in (
        ({"scenes": []}, "not a pixeldino scene manifest"),
        ({"pixeldino_manifest": 1}, "no 'scenes' list"),
        (_manifest({"id": "s1", "tile": "08WMA"}), "scene #0 lacks datetime, crs, assets"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message) as err:
            read_manifest(tmp_path / "bad.json")
        assert str(tmp_path / "bad.json") in str(err.value) and "re-run `pixeldino search`" in str(err.value)
    with pytest.raises(InputError, match="manifest to write"):
        write_manifest({"scenes": []}, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_select_scenes_fills_in_the_provider_and_refuses_unknown_ids() -> None:
    m = _manifest(_scene("s1", "08WMA"), _scene("s2", "52WEE", provider="local"))
    assert [(s["id"], s["provider"]) for s in select_scenes(m, None)] == [("s1", "earth-search"), ("s2", "local")]
    assert [s["id"] for s in select_scenes(m, ["s2"])] == ["s2"]
    assert select_scenes(m, []) == select_scenes(m, None)
    with pytest.raises(InputError, match=r"no scene\(s\) \['x', 'y'\] in m.json; pick ids"):
        select_scenes(m, ["s1", "y", "x"], source="m.json")


def test_manifest_scene(tmp_path: Path) -> None:
    path = write_manifest(_manifest(_scene("s1", "08WMA")), tmp_path / "m.json")
    assert manifest_scene(path, "s1")["tile"] == "08WMA"
    with pytest.raises(InputError, match="no scene 'nope' in the manifest; re-run the search"):
        manifest_scene(path, "nope")


def test_scenes_of_tiles_filters_by_manifest_tile(tmp_path: Path) -> None:
    manifest = write_manifest(_manifest(_scene("s1", "08WMA"), _scene("s2", "52WEE")), tmp_path / "m.json")
    scenes = [tmp_path / "s1.tif", tmp_path / "s2.tif"]
    assert scenes_of_tiles(scenes, ["52WEE"], manifest) == [tmp_path / "s2.tif"]
    assert scenes_of_tiles(scenes, ["8wma", "T52WEE"], manifest) == scenes  # any spelling of a tile id
    assert scenes_of_tiles(scenes, [], manifest) == scenes
    with pytest.raises(ConfigError, match=r"chips.unlabelled_tiles \['33VUC'\] matches none"):
        scenes_of_tiles(scenes, ["33VUC"], manifest)
    with pytest.raises(ConfigError, match="not an MGRS tile id"):
        scenes_of_tiles(scenes, ["Peel"], manifest)


def test_scenes_without_the_assets_the_search_asked_for_are_refused(tmp_path: Path) -> None:
    def read(manifest: dict) -> dict:
        (tmp_path / "m.json").write_text(json.dumps(manifest))
        return read_manifest(tmp_path / "m.json")

    asked = {"query": {"bands": ["B03", "B04"]}}
    full = _scene("s1", "08WMA", assets={"B03": "/d/B03.tif", "B04": "/d/B04.tif"})
    assert read({**_manifest(full), **asked})["scenes"][0]["assets"]["B03"] == "/d/B03.tif"
    for scene, message in (
        (
            _scene("s1", "08WMA"),
            r"scene s1 has no asset for band\(s\) B03 \(the search asked for B03, B04; it has B04\)",
        ),
        (_scene("s1", "08WMA", assets={}), "scene s1 has no band assets"),
        (_scene("s1", "08WMA", assets={"B03": "", "B04": None}), r"scene s1 has no href for band\(s\) B03, B04"),
        ("s1", "scene #0 is not an object"),
    ):
        with pytest.raises(InputError, match=message) as err:
            read({**_manifest(scene), **asked})
        assert str(tmp_path / "m.json") in str(err.value) and "re-run `pixeldino search`" in str(err.value)
    with pytest.raises(InputError, match=r"scene manifest .*nowhere\.json not found; run `pixeldino search`"):
        read_manifest(tmp_path / "nowhere.json")
