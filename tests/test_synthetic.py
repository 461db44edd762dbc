"""The synthetic Arctic scene generator: deterministic, real outlines at their real size, regions that differ."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.features import rasterize

from pixeldino import synthetic
from pixeldino.synthetic import generate_scene, load_outlines
from pixeldino.synthetic_regions import HELD_OUT_REGIONS, LABELLED_REGIONS


def test_outline_pools_are_the_real_inventories() -> None:
    pools = load_outlines()
    counts = {r: len(pools[r]) for r in (*LABELLED_REGIONS, *HELD_OUT_REGIONS)}
    # Nitze et al. (2021) per region; Banks_Island adds Huang et al. (2022); nothing is lost by the repair
    assert counts == {"Banks_Island": 552 + 262, "Horton": 534, "Tuktoyaktuk": 391, "Kolguev": 319,
                      "Herschel": 148, "Lena": 238}  # fmt: skip
    for region in counts:
        areas = np.array([o.area for o in pools[region]])
        assert (areas > 0).all() and 1e2 < np.median(areas) < 1e6  # m², real slump sizes
        centroid = pools[region][0].geometry.centroid
        assert abs(centroid.x) < 1e-6 and abs(centroid.y) < 1e-6


def test_same_seed_same_scene_other_seed_other_scene() -> None:
    a = generate_scene("Horton", 3, 96)
    b = generate_scene("Horton", 3, 96)
    c = generate_scene("Horton", 4, 96)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [s.source for s in a.slumps] == [s.source for s in b.slumps]
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.uint16 and a.image.shape == (len(synthetic.BANDS), 96, 96)
    assert a.image.min() >= 1  # 0 is nodata
    assert set(np.unique(a.mask).tolist()) <= {0, 1}


@pytest.mark.parametrize("region", ["Tuktoyaktuk", "Herschel"])
def test_pasted_slumps_have_the_pixels_of_their_real_outline(region) -> None:
    scene = generate_scene(region, 7, 192, n_slumps=8)
    pool = {o.source: o for o in load_outlines()[region]}
    assert len(scene.slumps) >= 4
    union = np.zeros(scene.mask.shape, dtype=bool)
    for slump in scene.slumps:
        real = pool[slump.source]
        # rotation and translation keep the real outline's size and shape
        assert slump.polygon.area == pytest.approx(real.area, rel=1e-9)
        assert slump.area_m2 == pytest.approx(real.area, rel=1e-9)
        assert slump.polygon.length == pytest.approx(real.geometry.length, rel=1e-9)
        pixels = rasterize([(slump.polygon, 1)], out_shape=scene.mask.shape, transform=scene.transform,
                           fill=0, dtype="uint8").astype(bool)  # fmt: skip
        assert int(pixels.sum()) == slump.n_pixels > 0
        # pixel-centre rasterisation at 10 m: the pixel area follows the polygon area up to a boundary term
        assert abs(slump.n_pixels * 100.0 - real.area) <= 0.5 * 10.0 * real.geometry.length + 200.0
        assert not (union & pixels).any()  # slumps do not overlap
        union |= pixels
    assert np.array_equal(union, scene.mask == 1)


def test_slumps_look_different_from_their_surroundings() -> None:
    scene = generate_scene("Horton", 1, 192, n_slumps=8)
    img = scene.image.astype(np.float64)
    rts, bg = scene.mask == 1, scene.mask == 0
    red, nir = img[2], img[6]
    assert red[rts].mean() > 1.3 * red[bg].mean()  # bare soil is brighter in the visible
    assert (nir / red)[rts].mean() < 0.6 * (nir / red)[bg].mean()  # and far less green


def test_regions_differ_in_band_statistics() -> None:
    stats = {
        r: np.array([synthetic.band_statistics(generate_scene(r, s, 128))["mean"] for s in (0, 1)])
        for r in (*LABELLED_REGIONS, *HELD_OUT_REGIONS)
    }
    means = {r: v.mean(axis=0) for r, v in stats.items()}
    # every pair of regions differs by more than 5 % in some band, far more than two scenes of one region do
    for i, a in enumerate(means):
        for b in list(means)[i + 1 :]:
            rel = np.abs(means[a] - means[b]) / means[b]
            assert rel.max() > 0.05, (a, b, rel)
    within = max((np.abs(v[0] - v[1]) / v[1]).max() for v in stats.values())
    held_out_gap = min(
        (np.abs(means[h] - means[lab]) / means[lab]).max() for h in HELD_OUT_REGIONS for lab in LABELLED_REGIONS
    )
    assert held_out_gap > 2 * within


def test_unknown_region_is_rejected() -> None:
    with pytest.raises(KeyError, match="unknown region"):
        generate_scene("Atlantis", 0, 64)


def test_terrain_leaves_the_images_as_they_were() -> None:
    # SHA-256 prefixes of images generated before scenes had a DEM: the terrain draws from its own random stream
    import hashlib

    for region, seed, size, digest in (("Horton", 3, 96, "2a9f39cdb3cf41fa"), ("Herschel", 7, 192, "fb6fddf8597d43c3"),
                                       ("Lena", 1000, 128, "4f1d023a39c5adf3")):  # fmt: skip
        assert hashlib.sha256(generate_scene(region, seed, size).image.tobytes()).hexdigest()[:16] == digest


def test_slumps_are_carved_into_the_terrain(tmp_path) -> None:
    from scipy import ndimage

    scene = generate_scene("Herschel", 7, 192, n_slumps=8)
    z = scene.elevation
    assert z is not None and z.shape == scene.mask.shape
    carved = [s for s in scene.slumps if s.in_dem]
    assert len(scene.slumps) == 8 and len(carved) >= 4  # about dem_slump_share (0.75) of them
    for slump in carved:
        one = rasterize([(slump.polygon, 1)], out_shape=z.shape, transform=scene.transform, fill=0,
                        dtype="uint8").astype(bool)  # fmt: skip
        ring = ndimage.binary_dilation(one, iterations=3) & ~ndimage.binary_dilation(one, iterations=1)
        # the floor lies below its rim, and the steepest step is the headwall scarp
        assert np.median(z[one]) < np.median(z[ring]) - 0.5
        gy, gx = np.gradient(z, 10.0)
        assert np.degrees(np.arctan(np.hypot(gx, gy)))[one].max() > 20.0
    # the DEM product: 30 m pixels over the scene, as written for aux.dem: file
    assert scene.dem is not None and scene.dem.shape == (64, 64) and scene.dem_transform.a == 30.0
    path = synthetic.write_dem(scene, tmp_path / "dem.tif")
    import rasterio

    with rasterio.open(path) as src:
        assert src.crs.to_string() == scene.crs and src.bounds.left == scene.transform.c
        assert np.array_equal(src.read(1), scene.dem)
    block_means = z.reshape(64, 3, 64, 3).mean(axis=(1, 3))
    assert 0.5 < float(np.std(scene.dem - block_means)) < 1.5  # about 1 m of noise, as GLO-30
