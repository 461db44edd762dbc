"""Batch augmentations: alignment of image and target, D4 permutations, validity, photometric, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixeldino.augment import (
    StrongAugmentConfig,
    adjust_brightness,
    adjust_contrast,
    apply_d4,
    decode_label,
    encode_label,
    gaussian_blur,
    photometric,
    source_coordinates,
    strong_augment,
    strong_geometric,
    weak_augment,
)
from pixeldino.labels import IGNORE

S = 32


def coordinate_image(batch: int, size: int = S) -> torch.Tensor:
    """Channels: x (column) and y (row) pixel coordinates."""
    r = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy]).unsqueeze(0).repeat(batch, 1, 1, 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_image_and_target_stay_aligned_pixel_for_pixel() -> None:
    image = coordinate_image(8)
    res = strong_geometric(image, image.clone(), gen(0))
    # same tensor, same grid, same call: identical everywhere, in bounds or not
    assert torch.equal(res.image, res.target)
    # where in bounds, the warped coordinates are exactly where the transform says each pixel came from
    src = source_coordinates(res.params, S, S).permute(0, 3, 1, 2)
    valid = res.valid.unsqueeze(1).expand_as(src)
    assert valid.float().mean() > 0.5
    assert torch.allclose(res.image[valid], src[valid], atol=1e-3)


def test_warped_coordinates_equal_the_geometric_transform() -> None:
    """Without elastic noise, recompute rotation + zoom + shift independently in numpy."""
    config = StrongAugmentConfig(elastic_strength=0.0)
    image = coordinate_image(6)
    res = strong_geometric(image, None, gen(3), config)
    p = res.params
    assert torch.all(p.angle.abs() <= math.radians(30) + 1e-6)
    assert torch.all((p.zoom >= 1) & (p.zoom <= 2))
    c = (S - 1) / 2  # the chip centre in pixel-index coordinates
    jj, ii = np.meshgrid(np.arange(S), np.arange(S))
    for b in range(6):
        a, z = float(p.angle[b]), float(p.zoom[b])
        tx, ty = p.shift[b].tolist()
        x_src = (math.cos(a) * (jj - c) - math.sin(a) * (ii - c)) / z + tx + c
        y_src = (math.sin(a) * (jj - c) + math.cos(a) * (ii - c)) / z + ty + c
        v = res.valid[b].numpy()
        np.testing.assert_allclose(res.image[b, 0].numpy()[v], x_src[v], atol=2e-3)
        np.testing.assert_allclose(res.image[b, 1].numpy()[v], y_src[v], atol=2e-3)


def test_validity_mask_is_false_out_of_bounds() -> None:
    # zoom 1 and a 30 degree rotation push the corners out of the chip
    config = StrongAugmentConfig(max_rotation_deg=30, zoom_range=(1.0, 1.0))
    image = coordinate_image(8)
    res = strong_geometric(image, None, gen(1), config)
    src = source_coordinates(res.params, S, S)
    inside = (src >= 0) & (src <= S - 1)
    inside = inside.all(-1)
    outside = ((src < -0.01) | (src > S - 1 + 0.01)).any(-1)
    assert outside.any()
    assert not (res.valid & outside).any()
    # a pixel is valid exactly when its bilinear footprint lies inside: everything strictly inside is valid
    strictly_inside = ((src >= 0.01) & (src <= S - 1 - 0.01)).all(-1)
    assert res.valid[strictly_inside].all()
    assert not res.valid[~inside].any()


def test_d4_is_a_permutation_and_covers_the_group() -> None:
    x = torch.arange(2 * S * S, dtype=torch.float32).reshape(1, 2, S, S).repeat(8, 1, 1, 1)
    out = apply_d4(x, torch.arange(8))
    for b in range(8):
        assert torch.equal(out[b].flatten().sort().values, x[b].flatten().sort().values)
        # the same permutation for every channel
        assert torch.equal(out[b, 1] - out[b, 0], torch.full((S, S), float(S * S)))
    reference = []
    for k in range(4):
        r = torch.rot90(x[0], k, dims=(1, 2))
        reference += [r, torch.flip(r, dims=(2,))]
    ours = {tuple(o.flatten().tolist()) for o in out}
    assert ours == {tuple(r.flatten().tolist()) for r in reference}


def test_weak_augment_moves_image_and_mask_together() -> None:
    image = coordinate_image(16)
    mask = (image[:, 0] * 7 + image[:, 1]).to(torch.int64)  # unique id per pixel
    x, m = weak_augment(image, mask, generator=gen(5))
    assert torch.equal((x[:, 0] * 7 + x[:, 1]).to(torch.int64), m)


def test_hard_labels_warp_with_ignore() -> None:
    mask = torch.zeros(4, S, S, dtype=torch.uint8)
    mask[:, 8:20, 8:20] = 1
    mask[:, :, :4] = IGNORE
    res = strong_geometric(torch.rand(4, 3, S, S), encode_label(mask), gen(2))
    label, known = decode_label(res.target, res.valid)
    assert not known[~res.valid].any()
    assert set(label.unique().tolist()) <= {0.0, 1.0}
    # without any transform the encoding round-trips
    identity = StrongAugmentConfig(max_rotation_deg=0, zoom_range=(1, 1), elastic_strength=0)
    res = strong_geometric(torch.rand(4, 3, S, S), encode_label(mask), gen(2), identity)
    label, known = decode_label(res.target, res.valid)
    assert torch.equal(known, mask != IGNORE)
    assert torch.equal(label[known], (mask == 1)[known].float())


def test_soft_targets_stay_distributions_where_valid() -> None:
    probs = torch.softmax(torch.randn(4, 6, S, S, generator=gen(0)), dim=1)
    res = strong_geometric(torch.rand(4, 3, S, S), probs, gen(4))
    sums = res.target.sum(1)[res.valid]
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    assert (res.target >= 0).all()


def test_photometric_does_not_touch_targets() -> None:
    image = torch.rand(4, 3, S, S, generator=gen(9))
    target = torch.rand(4, 2, S, S, generator=gen(8))
    geo = strong_geometric(image, target, gen(11))
    full = strong_augment(image, target, gen(11), value_range=(0.0, 1.0))
    assert torch.equal(geo.target, full.target)
    assert torch.equal(geo.valid, full.valid)
    assert not torch.equal(geo.image, full.image)


def test_photometric_identity_and_ranges() -> None:
    image = torch.rand(4, 3, S, S, generator=gen(1))
    none = StrongAugmentConfig(gamma_range=(1.0, 1.0), brightness=0.0, contrast=0.0, blur_p=0.0)
    assert torch.allclose(photometric(image, gen(0), none, value_range=(0.0, 1.0)), image, atol=1e-6)
    out = photometric(image, gen(0), value_range=(0.0, 1.0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    # per-sample frame (zscore-like input): stays within each sample's range
    z = torch.randn(4, 3, S, S, generator=gen(2)) * 3
    out = photometric(z, gen(0))
    assert (out.amin((1, 2, 3)) >= z.amin((1, 2, 3)) - 1e-4).all()
    assert (out.amax((1, 2, 3)) <= z.amax((1, 2, 3)) + 1e-4).all()
    u = torch.linspace(0, 1, 101)
    for c in (-0.5, 0.0, 0.5):
        v = adjust_contrast(u, torch.tensor(c))
        assert v[0].abs() < 1e-6 and (v[-1] - 1).abs() < 1e-6 and (v.diff() >= 0).all()
    assert torch.allclose(adjust_contrast(u, torch.tensor(0.0)), u, atol=1e-6)
    for b in (-0.5, 0.5):
        v = adjust_brightness(u, torch.tensor(b))
        assert v.min() >= 0 and v.max() <= 1


def test_gaussian_blur_keeps_constants_and_zero_sigma() -> None:
    const = torch.full((2, 3, S, S), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([2.0, 1.0]), 2.0), const, atol=1e-6)
    x = torch.rand(2, 3, S, S)
    out = gaussian_blur(x, torch.tensor([0.0, 1.5]), 2.0)
    assert torch.equal(out[0], x[0])
    assert out[1].std() < x[1].std()


@pytest.mark.parametrize("fn", ["weak", "strong"])
def test_same_seed_gives_identical_output(fn: str) -> None:
    image = torch.rand(6, 4, S, S, generator=gen(0))
    target = torch.softmax(torch.randn(6, 5, S, S, generator=gen(1)), 1)

    def run(seed: int) -> list[torch.Tensor]:
        if fn == "weak":
            return list(weak_augment(image, target, generator=gen(seed)))
        r = strong_augment(image, target, gen(seed))
        return [r.image, r.target, r.valid]

    a, b, c = run(42), run(42), run(43)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_auxiliary_layers_are_warped_but_not_recoloured() -> None:
    """With n_photometric, the reflectance bands get exactly the colour changes of a reflectance-only batch and the
    auxiliary layers after them (slope...) keep their values under an identity warp."""
    from pixeldino.augment import StrongAugmentConfig, strong_augment

    still = StrongAugmentConfig(max_rotation_deg=0.0, zoom_range=(1.0, 1.0), elastic_strength=0.0, blur_p=0.0)
    g = torch.Generator().manual_seed(3)
    spectral = torch.rand((2, 3, 16, 16), generator=g)
    aux = torch.rand((2, 1, 16, 16), generator=g)
    both = strong_augment(torch.cat([spectral, aux], 1), None, torch.Generator().manual_seed(7), still,
                          value_range=(0.0, 1.0), n_photometric=3)  # fmt: skip
    alone = strong_augment(spectral, None, torch.Generator().manual_seed(7), still, value_range=(0.0, 1.0))
    assert torch.allclose(both.image[:, :3], alone.image, atol=1e-6)
    assert not torch.allclose(alone.image, spectral, atol=1e-3)  # the colours did change
    assert torch.allclose(both.image[:, 3:], aux, atol=1e-5)
