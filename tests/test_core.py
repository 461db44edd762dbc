"""Core helpers: band names, normalisation, atomic outputs, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixeldino.bands import canonical_band, canonical_bands
from pixeldino.errors import ConfigError, InputError
from pixeldino.io import atomic_output, read_json, write_json
from pixeldino.normalise import compute_zscore_stats, normalise, validate_spec


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("B02", "B02"),
        ("blue", "B02"),
        ("b2", "B02"),
        ("rededge1", "B05"),
        ("nir08", "B8A"),
        ("B8A", "B8A"),
        ("B11_20m", "B11"),
        ("swir22", "B12"),
        ("nir", "B08"),
    ],
)
def test_canonical_band(alias: str, expected: str) -> None:
    assert canonical_band(alias) == expected


def test_canonical_bands_rejects_unknown_and_duplicates() -> None:
    with pytest.raises(ConfigError, match="unknown Sentinel-2 band 'B13'"):
        canonical_band("B13")
    with pytest.raises(ConfigError, match="B04 more than once"):
        canonical_bands(["red", "B04"])


def test_logsigmoid_matches_the_paper_formula() -> None:
    dn = np.array([[0, 420, 1000, 10000]], dtype=np.uint16)
    expected = 1 / (1 + np.exp(-2.5 * (np.log(1 + 0.005 * dn.astype(float)) - 2.1)))
    np.testing.assert_allclose(normalise(dn, {"method": "logsigmoid"}), expected, rtol=1e-6)
    # ln(1 + 0.005 * DN) = 2.1 is the midpoint: sigmoid(0) = 0.5
    mid = (np.exp(2.1) - 1) / 0.005
    assert normalise(np.array([mid]), {"method": "logsigmoid"})[0] == pytest.approx(0.5, abs=1e-6)


def test_zscore_statistics_are_robust_and_per_band() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(1000, 100, (4, 32, 32)), rng.normal(3000, 10, (4, 32, 32))], axis=1)
    x[0, 0, 0, 0] = 60000  # one outlier must not move median/MAD
    spec = validate_spec(compute_zscore_stats(x), n_bands=2)
    assert spec["center"] == pytest.approx([1000, 3000], rel=0.01)
    assert spec["scale"] == pytest.approx([100, 10], rel=0.05)
    z = normalise(x, spec, band_axis=1)
    assert abs(float(np.median(z[:, 1]))) < 0.05
    with pytest.raises(ConfigError, match="3 values for 2 bands"):
        validate_spec({"method": "zscore", "center": [1, 2, 3], "scale": [1, 1, 1]}, n_bands=2)


def test_scale_normalisation() -> None:
    assert normalise(np.array([2500]), validate_spec({"method": "scale"}))[0] == pytest.approx(0.25)


def test_atomic_output_renames_on_success_and_cleans_up_on_failure(tmp_path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"

    failing = tmp_path / "fail.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(failing) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not failing.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]  # no temporary left behind


def test_atomic_output_replaces_directories(tmp_path) -> None:
    store = tmp_path / "chips.zarr"
    store.mkdir()
    (store / "old").write_text("x")
    with atomic_output(store) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in store.iterdir()) == ["new"]


def test_json_round_trip_and_errors(tmp_path) -> None:
    path = write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(3), "p": tmp_path})
    assert read_json(path) == {"x": 1.5, "v": [0, 1, 2], "p": str(tmp_path)}
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "missing.json")
    assert json.loads(path.read_text())["v"] == [0, 1, 2]
