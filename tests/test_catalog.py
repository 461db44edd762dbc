"""The STAC catalog of a run's outputs: structure, provenance, relative hrefs, offline validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from test_change import YEARS, write_year

from pixeldino.catalog import build_catalog
from pixeldino.change import ChangeParams, run_change
from pixeldino.errors import InputError
from pixeldino.merge import MergeParams, run_merge
from pixeldino.stac_checks import PROJECTION, RASTER, check_extension_fields, validate_catalog


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("catalog")
    scenes, polygons = zip(*(write_year(tmp, y) for y in YEARS[:2]))
    # the first scene has an SCL quality mask, named by its sidecar
    with rasterio.open(scenes[0]) as src:
        profile = dict(src.profile, dtype="uint8", nodata=None)
    mask = scenes[0].with_name(scenes[0].stem + "_mask.tif")
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
    side = json.loads(scenes[0].with_suffix(".json").read_text())
    side.update(
        quality_mask=mask.name, stac_id="S2A_MSIL2A_20190715T200000_N0213_R000_T08WMA", collection="sentinel-2-l2a"
    )
    scenes[0].with_suffix(".json").write_text(json.dumps(side))
    probs = [p.with_name(p.stem + "_prob.tif") for p in scenes]
    run_merge(MergeParams(), list(polygons), tmp / "rts_polygons.gpkg", tmp / "rts_polygons.parquet")
    run_change(
        ChangeParams(),
        MergeParams(),
        list(polygons),
        tmp / "rts_change.gpkg",
        years=list(YEARS[:2]),
        out_tracks_parquet=tmp / "rts_tracks.parquet",
        out_change_png=tmp / "change.png",
    )
    out = tmp / "stac"
    build_catalog(
        out,
        run="synthetic",
        sidecars=[s.with_suffix(".json") for s in scenes],
        probabilities=probs,
        polygons=list(polygons),
        merged={"gpkg": tmp / "rts_polygons.gpkg", "parquet": tmp / "rts_polygons.parquet"},
        change={
            "gpkg": tmp / "rts_change.gpkg",
            "tracks_parquet": tmp / "rts_tracks.parquet",
            "change_png": tmp / "change.png",
        },
    )
    return {"tmp": tmp, "out": out, "scenes": scenes}


def test_catalog_validates_offline(run) -> None:
    assert validate_catalog(run["out"] / "catalog.json") == 1 + 1 + 2 + 2  # catalog, collection, 2 scenes, 2 maps


def test_catalog_structure_and_provenance(run) -> None:
    cat = pystac.Catalog.from_file(str(run["out"] / "catalog.json"))
    collection = next(cat.get_children())
    assert collection.id == "pixeldino-synthetic"
    items = {i.id: i for i in collection.get_items()}
    assert set(items) == {"S2A_20190715_T08WMA", "S2A_20210715_T08WMA", "rts-merged", "rts-tracks"}
    first = items["S2A_20190715_T08WMA"]
    assert set(first.assets) == {"probability", "quality_mask", "polygons"}
    assert "quality_mask" not in items["S2A_20210715_T08WMA"].assets  # no SCL, no mask asset
    assert PROJECTION in first.stac_extensions and RASTER in first.stac_extensions
    assert first.properties["proj:code"] == "EPSG:32608" and first.properties["proj:shape"] == [400, 400]
    band = first.assets["probability"].extra_fields["raster:bands"][0]
    assert band["data_type"] == "uint8" and band["nodata"] == 255 and band["scale"] == pytest.approx(1 / 254)
    assert first.properties["pixeldino:model"] == "synthetic" and first.properties["pixeldino:threshold"] == 0.5
    assert first.properties["pixeldino:input_items"] == ["S2A_MSIL2A_20190715T200000_N0213_R000_T08WMA"]
    assert "pixeldino" in first.properties["processing:software"]
    tracks = items["rts-tracks"]
    assert set(tracks.assets) == {"gpkg", "tracks_parquet", "change_png"}
    assert len(tracks.properties["pixeldino:input_items"]) == 2
    # self-contained: relative hrefs that resolve
    raw = json.loads((run["out"] / "pixeldino-synthetic" / "rts-merged" / "rts-merged.json").read_text())
    assert all(not a["href"].startswith("/") for a in raw["assets"].values())
    for item in items.values():
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).exists(), asset.href


def test_catalog_moved_elsewhere_still_resolves(run, tmp_path) -> None:
    copy = tmp_path / "published"
    shutil.copytree(run["tmp"], copy, ignore=shutil.ignore_patterns("*.gpkg-journal"))
    cat = pystac.Catalog.from_file(str(copy / "stac" / "catalog.json"))
    for item in cat.get_items(recursive=True):
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_relative_to(copy)


def test_invalid_items_fail_validation(run, tmp_path) -> None:
    broken = tmp_path / "stac"
    shutil.copytree(run["out"], broken)
    item = broken / "pixeldino-synthetic" / "S2A_20190715_T08WMA" / "S2A_20190715_T08WMA.json"
    data = json.loads(item.read_text())
    data["properties"]["proj:shape"] = [400]
    item.write_text(json.dumps(data))
    with pytest.raises(InputError, match="proj:shape"):
        validate_catalog(broken / "catalog.json")
    del data["properties"]["datetime"]  # core schema: an item needs a datetime
    data["properties"]["proj:shape"] = [400, 400]
    item.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not valid STAC"):
        validate_catalog(broken / "catalog.json")
    assert check_extension_fields({"properties": {"processing:software": {"pixeldino": 1}}})


def _predictions_of(run: dict, tmp_path: Path, model: str | None) -> dict:
    """A copy of the run's outputs whose probability rasters name ``model`` (None: as they are)."""
    copy = tmp_path / "outputs"
    shutil.copytree(run["tmp"], copy, ignore=shutil.ignore_patterns("stac", "*.gpkg-journal"))
    scenes = [copy / s.name for s in run["scenes"]]
    probs = [s.with_name(s.stem + "_prob.tif") for s in scenes]
    if model is not None:
        for prob in probs:
            with rasterio.open(prob, "r+") as dst:
                dst.update_tags(MODEL=model)
    return {
        "sidecars": [s.with_suffix(".json") for s in scenes],
        "probabilities": probs,
        "merged": {"gpkg": copy / "rts_polygons.gpkg"},
        "dir": copy,
    }


def _catalog_with_model(run: dict, tmp_path: Path, *, merged: bool) -> tuple[Path, Path]:
    """A tiny model (bands B08), the run's outputs made with it and their catalog with its card: ``(weights, stac
    folder)``; ``merged``: the catalog holds the merged map too."""
    from test_modelcard import save_tiny_model

    from pixeldino.modelio import model_card_path, model_id

    weights = save_tiny_model(tmp_path / "model" / "model.safetensors", bands=["B08"])
    outputs = _predictions_of(run, tmp_path, model_id(weights))
    out = outputs["dir"] / "stac"
    build_catalog(
        out, run="synthetic", sidecars=outputs["sidecars"], probabilities=outputs["probabilities"],
        merged=outputs["merged"] if merged else None, model_card=model_card_path(weights),
    )  # fmt: skip
    return weights, out


def test_catalog_links_the_model_card(run, tmp_path) -> None:
    from pixeldino.modelio import model_card_path, model_id

    weights, out = _catalog_with_model(run, tmp_path, merged=True)
    assert validate_catalog(out / "catalog.json") == 1 + 1 + 2 + 1 + 1  # catalog, collection, 2 scenes, map, model
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    (model,) = cat.get_items()  # the model card: an item of the root catalog, beside the collection
    assert model.id == f"pixeldino-model-{model_id(weights)}" and model.properties["mlm:input"][0]["bands"] == ["B08"]
    raw = json.loads((out / model.id / f"{model.id}.json").read_text())
    assert raw["assets"]["model"]["href"] == "../../../model/model.safetensors"  # relative, to the model files
    assert Path(model.assets["model"].get_absolute_href()) == weights.resolve()
    assert Path(model.assets["metadata"].get_absolute_href()) == weights.with_suffix(".json").resolve()
    collection = next(cat.get_children())
    derived = [collection, *collection.get_items()]
    assert len(derived) == 4  # the collection, 2 scene items and the merged map
    for obj in derived:
        (link,) = obj.get_links("derived_from")
        assert not link.get_href().startswith("/")  # self-contained
        assert link.resolve_stac_object().target.id == model.id
    # the card refers to the model of the maps: another model's card is refused
    with pytest.raises(InputError, match="the card describes model .* but the predictions were made with synthetic"):
        build_catalog(
            tmp_path / "other", run="synthetic", sidecars=[s.with_suffix(".json") for s in run["scenes"]],
            probabilities=[p.with_name(p.stem + "_prob.tif") for p in run["scenes"]],
            model_card=model_card_path(weights),
        )  # fmt: skip


def test_model_item_fails_validation_when_its_mlm_fields_break(run, tmp_path) -> None:
    from pixeldino.modelio import model_id

    weights, out = _catalog_with_model(run, tmp_path, merged=False)
    item_file = out / f"pixeldino-model-{model_id(weights)}" / f"pixeldino-model-{model_id(weights)}.json"
    data = json.loads(item_file.read_text())
    data["properties"]["mlm:input"][0]["input"]["shape"] = [-1, 1, 64]
    item_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"mlm:input\[0\].input: shape and dim_order differ in length"):
        validate_catalog(out / "catalog.json")


def test_inputs_that_do_not_correspond_are_refused(run, tmp_path) -> None:
    scenes = list(run["scenes"])
    sidecars = [s.with_suffix(".json") for s in scenes]
    probs = [s.with_name(s.stem + "_prob.tif") for s in scenes]
    out = tmp_path / "stac"

    def refused(match: str, **kwargs: object) -> None:
        args: dict[str, object] = {"run": "x", "sidecars": sidecars, "probabilities": probs, **kwargs}
        with pytest.raises(InputError, match=match) as err:
            build_catalog(out, **args)  # type: ignore[arg-type]
        assert "\n" not in str(err.value) and not out.exists()

    refused(r"--sidecars and --probabilities must name one file per scene, in the same order \(2 vs 1\)",
            probabilities=probs[:1])  # fmt: skip
    refused(r"--pseudo names 1 files for 2 scenes; give one per scene", pseudo=probs[:1])
    refused(r"--polygons names 3 files for 2 scenes", polygons=[*probs, probs[0]])
    # the same files in two orders: each raster is tagged with its scene
    refused(
        rf"{probs[1].name} is of scene S2A_20210715_T08WMA but its sidecar .*{sidecars[0].name} is of scene "
        r"S2A_20190715_T08WMA; give the sidecars and the rasters of each scene in the same order",
        probabilities=probs[::-1],
    )
    refused(r"nowhere\.gpkg: polygon file not found", polygons=[tmp_path / "nowhere.gpkg"] * 2)
    refused(r"nowhere\.gpkg: not found; run the stage that writes it", merged={"gpkg": tmp_path / "nowhere.gpkg"})
    undated = tmp_path / "undated.json"
    undated.write_text(json.dumps({"scene_id": "S2A_20190715_T08WMA"}))
    refused(r"undated\.json: no acquisition date \('datetime'\)", sidecars=[undated, sidecars[1]])
