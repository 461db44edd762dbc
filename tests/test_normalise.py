"""One normalisation: numpy (inference), torch (training) and the inference look-up table
(:func:`pixeldino.normalise.lookup_table`, what the predictor uses) agree, nodata included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixeldino.normalise import NODATA_DN, lookup_table, normalise, normalise_torch

SPECS = [
    {"method": "logsigmoid"},
    {"method": "scale", "factor": 1e-4},
    {"method": "zscore", "center": [1000.0, 900.0, 800.0], "scale": [300.0, 200.0, 100.0]},
]


def chips() -> np.ndarray:
    """``(2, 3, 8, 8)`` uint16 DNs with a nodata pixel (0 in every band) and DN 0 in one band of another pixel."""
    dn = np.random.default_rng(0).integers(1, 12000, size=(2, 3, 8, 8)).astype(np.uint16)
    dn[:, :, 0, 0] = NODATA_DN
    dn[:, 1, 0, 1] = 0
    dn[0, 0, 2, 2] = np.iinfo(np.uint16).max
    return dn


@pytest.mark.parametrize("spec", SPECS, ids=[s["method"] for s in SPECS])
def test_numpy_torch_and_lookup_table_agree_on_every_dn(spec) -> None:
    dn = chips()
    ours = normalise_torch(torch.from_numpy(dn.astype(np.float32)), spec, nodata=NODATA_DN).numpy()
    numpy_values = normalise(dn, spec, band_axis=1, nodata=NODATA_DN)
    np.testing.assert_allclose(ours, numpy_values, rtol=1e-6, atol=1e-7)
    # inference: look up every band's DN, then zero the pixels without data (what the predictor does)
    table = lookup_table(spec, 3, np.uint16)
    assert table is not None and table.shape == (3, 65536) and table.dtype == np.float32
    looked_up = np.stack([table[b][dn[:, b]] for b in range(3)], axis=1) * (dn != NODATA_DN).any(axis=1)[:, None]
    np.testing.assert_array_equal(looked_up, numpy_values)  # the same numpy formula: bit for bit
    # nodata is 0 everywhere; a DN 0 in one band of a pixel with data is the formula's value for DN 0
    assert (ours[:, :, 0, 0] == 0).all() and (numpy_values[:, :, 0, 0] == 0).all()
    assert np.allclose(ours[:, 1, 0, 1], table[1, 0], rtol=1e-6, atol=1e-7)
    if spec["method"] != "scale":  # scale maps DN 0 to 0 anyway
        assert table[1, 0] != 0


@pytest.mark.parametrize("spec", SPECS, ids=[s["method"] for s in SPECS])
def test_without_nodata_every_value_is_normalised(spec) -> None:
    dn = chips()
    plain = normalise(dn, spec, band_axis=1)
    assert np.array_equal(plain[:, :, 0, 0], normalise(np.zeros((2, 3, 1, 1)), spec, band_axis=1)[:, :, 0, 0])
    ours = normalise_torch(torch.from_numpy(dn.astype(np.float32)), spec).numpy()
    np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-7)


def test_lookup_table_is_for_small_unsigned_types_only() -> None:
    assert lookup_table({"method": "logsigmoid"}, 2, np.uint8).shape == (2, 256)  # type: ignore[union-attr]
    assert lookup_table({"method": "logsigmoid"}, 2, np.float32) is None
    assert lookup_table({"method": "logsigmoid"}, 2, "int16") is None


def test_torch_normalisation_runs_on_the_band_axis_it_is_given() -> None:
    spec = SPECS[2]
    dn = chips()
    last = torch.from_numpy(np.moveaxis(dn, 1, -1).astype(np.float32))
    moved = normalise_torch(last, spec, band_axis=-1, nodata=NODATA_DN).numpy()
    np.testing.assert_allclose(np.moveaxis(moved, -1, 1), normalise(dn, spec, band_axis=1, nodata=0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------- auxiliary layers
AUX_BANDS = ["B03", "B04", "B08", "slope", "relative_elevation", "aspect"]


def aux_chips() -> np.ndarray:
    """``(2, 6, 8, 8)`` DNs: three Sentinel-2 bands, then slope, relative elevation and aspect in their encodings."""
    from pixeldino.terrain import ENCODINGS

    rng = np.random.default_rng(1)
    dn = np.concatenate(
        [
            rng.integers(1, 12000, size=(2, 3, 8, 8)),
            rng.integers(1, ENCODINGS["slope"].max_dn + 1, size=(2, 1, 8, 8)),
            rng.integers(1, ENCODINGS["relative_elevation"].max_dn + 1, size=(2, 1, 8, 8)),
            rng.integers(1, ENCODINGS["aspect"].max_dn + 1, size=(2, 1, 8, 8)),
        ],
        axis=1,
    ).astype(np.uint16)
    dn[:, :, 0, 0] = NODATA_DN  # a pixel without data
    dn[:, 5, 0, 1] = 0  # no aspect (flat) in a pixel with data
    return dn


@pytest.mark.parametrize("method", ["logsigmoid", "zscore"])
def test_aux_layers_agree_in_numpy_torch_and_lookup_table(method) -> None:
    from pixeldino.normalise import validate_spec, with_aux

    base = SPECS[2] if method == "zscore" else SPECS[0]
    spec = validate_spec(with_aux(base, AUX_BANDS), bands=AUX_BANDS)
    assert [e["band"] for e in spec["aux"]] == ["slope", "relative_elevation", "aspect"]
    dn = aux_chips()
    ours = normalise_torch(torch.from_numpy(dn.astype(np.float32)), spec, nodata=NODATA_DN).numpy()
    numpy_values = normalise(dn, spec, band_axis=1, nodata=NODATA_DN)
    np.testing.assert_allclose(ours, numpy_values, rtol=1e-6, atol=2e-7)
    table = lookup_table(spec, 6, np.uint16)
    assert table is not None
    looked_up = np.stack([table[b][dn[:, b]] for b in range(6)], axis=1) * (dn != NODATA_DN).any(axis=1)[:, None]
    np.testing.assert_array_equal(looked_up, numpy_values)
    # the Sentinel-2 bands are normalised by the method as without layers
    np.testing.assert_array_equal(numpy_values[:, :3], normalise(dn[:, :3], base, band_axis=1, nodata=NODATA_DN))
    # the layers: decoded and scaled; DN 0 (no data) is 0
    assert (numpy_values[:, :, 0, 0] == 0).all() and numpy_values[0, 5, 0, 1] == 0
    # slope DN 4501 = 45 degrees -> 0.5; relative elevation DN 32501 = +25 m -> 0.5; DN 1 = -300 m -> clipped to -2;
    # aspect DN 18001 = 180 degrees (facing south) -> cos = -1
    assert table[3, 4501] == pytest.approx(0.5, abs=1e-6)
    assert table[4, 32501] == pytest.approx(0.5, abs=1e-5) and table[4, 1] == pytest.approx(-2.0)
    assert table[5, 18001] == pytest.approx(-1.0, abs=1e-6) and table[5, 1] == pytest.approx(1.0, abs=1e-6)


def test_aux_spec_is_checked_against_the_bands() -> None:
    from pixeldino.errors import ConfigError
    from pixeldino.normalise import compute_zscore_stats, validate_spec, with_aux

    spec = with_aux({"method": "zscore", "center": [1.0, 2.0], "scale": [1.0, 1.0]}, ["B04", "B08", "slope"])
    assert validate_spec(spec, 3) == validate_spec(spec, bands=["B04", "B08", "slope"])
    with pytest.raises(ConfigError, match="do not name the last input bands"):
        validate_spec(spec, bands=["B04", "slope", "B08"])
    with pytest.raises(ConfigError, match="zscore 'center' has 2 values for 3 bands"):
        validate_spec({k: v for k, v in spec.items() if k != "aux"}, 3)
    with pytest.raises(ConfigError, match="must come after every other band"):
        with_aux({"method": "logsigmoid"}, ["slope", "B04"])
    with pytest.raises(ConfigError, match="not the auxiliary layers of the bands"):
        with_aux(spec, ["B04", "B08", "relative_elevation"])
    assert "aux" not in with_aux({"method": "logsigmoid"}, ["B04", "B08"])
    # zscore statistics leave the layers out: they have their own scaling
    samples = np.stack([np.full((4, 4), 100.0), np.full((4, 4), 200.0), np.full((4, 4), 9001.0)])
    assert compute_zscore_stats(samples, n_aux=1)["center"] == [100.0, 200.0]
