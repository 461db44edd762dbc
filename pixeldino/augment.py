"""Batch augmentations for training, in plain torch, on whatever device the batch lives on.

Every random draw comes from an explicit :class:`torch.Generator` (on the batch's device), so a run is
reproducible from its seed and a resumed run replays exactly the same augmentations.

* **weak**: one random element of the dihedral group D4 (the 8 flips/rot90s) per sample
  (:func:`weak_augment`). It is a pure permutation of pixels, applied with one ``gather``.
* **strong geometric**: per-sample rotation (±30°), random resized crop (zoom 1-2) and an elastic warp (smooth
  random displacement field), composed into ONE sampling grid and applied with ONE ``grid_sample`` call to a
  tensor that concatenates the image, the target(s) and an all-ones channel (:func:`strong_geometric`). Image and
  target therefore stay aligned pixel for pixel by construction — the PixelDINO reference warped the teacher
  target with a different random key than the student image, which we must not repeat. The warped ones-channel
  gives the in-bounds validity mask.
* **strong photometric** (image only, :func:`photometric`): gamma, brightness, contrast and Gaussian blur.

Targets are either a soft probability map ``(B, K, H, W)`` (bilinear interpolation of a distribution is again a
distribution wherever all four neighbours are in bounds, i.e. wherever the validity mask is true) or a hard label
encoded as float channels ``[is_rts, is_known]`` with :func:`encode_label` / :func:`decode_label`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from pixeldino.labels import IGNORE

#: A warped ones-channel below ``1 - VALID_EPS`` means the bilinear footprint touched the outside of the chip.
VALID_EPS = 1e-3


def _pair(bounds: dict[str, float]) -> dict[str, object]:
    """Config-schema keywords of a ``(low, high)`` range field whose values obey ``bounds``."""
    return {"items": bounds, "minItems": 2, "maxItems": 2}


@dataclass(frozen=True)
class StrongAugmentConfig:
    """Ranges of the strong augmentation (defaults follow the PixelDINO paper).

    Attributes:
        max_rotation_deg: rotation angle drawn uniformly from ``[-max, max]`` degrees.
        zoom_range: zoom factor drawn uniformly; ``z`` means the output shows a ``1/z`` crop of the input.
        elastic_spacing: distance in pixels between the control points of the elastic displacement field.
        elastic_strength: standard deviation of the control-point displacements, in pixels.
        gamma_range: gamma drawn log-uniformly from this range (``0.75..1.33`` is symmetric in log space).
        brightness: brightness shift ``b`` drawn uniformly from ``[-brightness, brightness]`` (see :func:`photometric`).
        contrast: contrast change ``c`` drawn uniformly from ``[-contrast, contrast]`` (see :func:`photometric`).
        blur_sigma_max: Gaussian blur sigma drawn uniformly from ``(0, blur_sigma_max]`` pixels.
        blur_p: probability that a sample is blurred at all.
        band_gain: per-band gain ``exp(u)``, ``u`` uniform in ``[-band_gain, band_gain]``, drawn for every band of
            every sample (0: off). Real atmospheres and sensors change bands unequally; one shared draw for all
            bands cannot imitate that.
        band_offset: per-band additive offset on the unit interval, uniform in ``[-band_offset, band_offset]``.
        band_gamma: per-band gamma drawn log-uniformly from this range (``(1, 1)``: off).
    """

    max_rotation_deg: float = field(default=30.0, metadata={"minimum": 0, "maximum": 180})
    zoom_range: tuple[float, float] = field(default=(1.0, 2.0), metadata=_pair({"minimum": 1}))
    elastic_spacing: int = field(default=16, metadata={"minimum": 2})
    elastic_strength: float = field(default=2.0, metadata={"minimum": 0})
    gamma_range: tuple[float, float] = field(default=(0.75, 1.33), metadata=_pair({"exclusiveMinimum": 0}))
    brightness: float = field(default=0.5, metadata={"minimum": 0, "maximum": 1})
    contrast: float = field(default=0.5, metadata={"minimum": 0, "maximum": 1})
    blur_sigma_max: float = field(default=2.0, metadata={"minimum": 0})
    blur_p: float = field(default=0.5, metadata={"minimum": 0, "maximum": 1})
    band_gain: float = field(default=0.0, metadata={"minimum": 0, "maximum": 1})
    band_offset: float = field(default=0.0, metadata={"minimum": 0, "maximum": 1})
    band_gamma: tuple[float, float] = field(default=(1.0, 1.0), metadata=_pair({"exclusiveMinimum": 0}))


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


# --------------------------------------------------------------------------------------------------------------
# weak: D4
# --------------------------------------------------------------------------------------------------------------


def sample_d4(batch: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Draw one D4 element per sample, encoded as an int code 0..7 (bit 0: flip rows, bit 1: flip columns,
    bit 2: transpose)."""
    return torch.randint(0, 8, (batch,), generator=generator, device=torch.device(device))


def d4_source_index(codes: torch.Tensor, size: int) -> torch.Tensor:
    """Flat source pixel index for every output pixel of each sample: ``(B, size*size)`` int64.

    Output pixel ``(i, j)`` is read from ``(a, b)`` where ``(a, b) = (j, i)`` if transposed else ``(i, j)``, then
    ``a`` and/or ``b`` are mirrored. The three bits generate all 8 elements of D4 (rot90 = transpose + flip).
    """
    r = torch.arange(size, device=codes.device)
    i = r.view(1, size, 1).expand(codes.shape[0], size, size)
    j = r.view(1, 1, size).expand(codes.shape[0], size, size)
    c = codes.view(-1, 1, 1)
    transpose = (c & 4).bool()
    a = torch.where(transpose, j, i)
    b = torch.where(transpose, i, j)
    a = torch.where((c & 1).bool(), size - 1 - a, a)
    b = torch.where((c & 2).bool(), size - 1 - b, b)
    return (a * size + b).reshape(codes.shape[0], -1)


def apply_d4(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Apply per-sample D4 elements to a ``(B, C, S, S)`` or ``(B, S, S)`` tensor (any dtype)."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)
    b, c, h, w = x.shape
    if h != w:
        raise ValueError(f"D4 augmentation needs square chips, got {h}x{w}")
    index = d4_source_index(codes, h).unsqueeze(1).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).reshape(b, c, h, w)
    return out.squeeze(1) if squeeze else out


def weak_augment(x: torch.Tensor, *others: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Apply the same random D4 element per sample to ``x`` and to every tensor in ``others``.

    Returns:
        ``(x_aug, *others_aug)``; tensors may be ``(B, C, S, S)`` or ``(B, S, S)`` and of any dtype.
    """
    codes = sample_d4(x.shape[0], generator, x.device)
    return (apply_d4(x, codes), *(apply_d4(o, codes) for o in others))


# --------------------------------------------------------------------------------------------------------------
# strong: geometry
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GeometricParams:
    """The random geometric transform of each sample (all tensors have batch size B).

    The source location (pixel units, origin at the chip centre) of an output pixel at centred position
    ``p = (X, Y)`` is ``R(angle) @ p / zoom + shift + displacement[:, :, i, j]``.
    """

    angle: torch.Tensor  # (B,) radians
    zoom: torch.Tensor  # (B,)
    shift: torch.Tensor  # (B, 2) pixels, (x, y)
    displacement: torch.Tensor  # (B, 2, H, W) pixels, (x, y)


def sample_geometry(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str,
    config: StrongAugmentConfig = StrongAugmentConfig(),
) -> GeometricParams:
    """Draw rotation, crop and elastic displacement for ``batch`` samples (draw order is fixed)."""
    dev = torch.device(device)
    max_rot = math.radians(config.max_rotation_deg)
    angle = _uniform(batch, -max_rot, max_rot, generator, dev)
    zoom = _uniform(batch, config.zoom_range[0], config.zoom_range[1], generator, dev)
    # the (unrotated) crop of size W/z x H/z stays inside the chip
    room = torch.stack([(width - width / zoom) / 2, (height - height / zoom) / 2], dim=1)
    shift = (2 * torch.rand(batch, 2, generator=generator, device=dev) - 1) * room
    gh = max(2, math.ceil(height / config.elastic_spacing) + 1)
    gw = max(2, math.ceil(width / config.elastic_spacing) + 1)
    coarse = torch.randn(batch, 2, gh, gw, generator=generator, device=dev) * config.elastic_strength
    # bicubic upsampling of a coarse noise grid gives a smooth field whose magnitude is ~elastic_strength px
    displacement = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return GeometricParams(angle=angle, zoom=zoom, shift=shift, displacement=displacement)


def source_coordinates(params: GeometricParams, height: int, width: int) -> torch.Tensor:
    """Source position in pixel-index coordinates (pixel centres at integers) of every output pixel.

    Returns:
        ``(B, H, W, 2)`` tensor of ``(x, y)`` = (column, row) source coordinates.
    """
    dev = params.angle.device
    ys = torch.arange(height, device=dev, dtype=torch.float32) + 0.5 - height / 2
    xs = torch.arange(width, device=dev, dtype=torch.float32) + 0.5 - width / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    cos = torch.cos(params.angle).view(-1, 1, 1)
    sin = torch.sin(params.angle).view(-1, 1, 1)
    z = params.zoom.view(-1, 1, 1)
    sx = (cos * xx - sin * yy) / z + params.shift[:, 0].view(-1, 1, 1) + params.displacement[:, 0]
    sy = (sin * xx + cos * yy) / z + params.shift[:, 1].view(-1, 1, 1) + params.displacement[:, 1]
    return torch.stack([sx + width / 2 - 0.5, sy + height / 2 - 0.5], dim=-1)


def sampling_grid(params: GeometricParams, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` grid (``align_corners=False`` convention) for :func:`source_coordinates`."""
    src = source_coordinates(params, height, width)
    scale = torch.tensor([2.0 / width, 2.0 / height], device=src.device)
    return (src + 0.5) * scale - 1.0


@dataclass
class WarpResult:
    """Output of :func:`strong_geometric`."""

    image: torch.Tensor  # (B, C, H, W), zero outside the source chip
    target: torch.Tensor | None  # (B, K, H, W), warped with the very same grid
    valid: torch.Tensor  # (B, H, W) bool: the output pixel's whole bilinear footprint lies inside the chip
    params: GeometricParams


def strong_geometric(
    image: torch.Tensor,
    target: torch.Tensor | None,
    generator: torch.Generator,
    config: StrongAugmentConfig = StrongAugmentConfig(),
) -> WarpResult:
    """Warp image and target with one random geometric transform per sample, in one ``grid_sample`` call.

    Args:
        image: ``(B, C, H, W)`` float tensor.
        target: ``(B, K, H, W)`` float tensor (soft probabilities or :func:`encode_label` channels) or None.
        generator: random source on ``image.device``.
        config: augmentation ranges.
    """
    b, c, h, w = image.shape
    params = sample_geometry(b, h, w, generator, image.device, config)
    grid = sampling_grid(params, h, w).to(image.dtype)
    parts = [image] + ([target.to(image.dtype)] if target is not None else []) + [image.new_ones(b, 1, h, w)]
    warped = F.grid_sample(torch.cat(parts, dim=1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = warped[:, -1] >= 1.0 - VALID_EPS
    out_target = warped[:, c:-1] if target is not None else None
    return WarpResult(image=warped[:, :c], target=out_target, valid=valid, params=params)


def encode_label(mask: torch.Tensor) -> torch.Tensor:
    """Hard label ``(B, H, W)`` with 0 / 1 / :data:`pixeldino.labels.IGNORE` -> float channels ``(B, 2, H, W)``:
    is_rts, is_known."""
    return torch.stack([(mask == 1), (mask != IGNORE)], dim=1).float()


def decode_label(warped: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warped :func:`encode_label` channels -> ``(label float 0/1 (B,H,W), known bool (B,H,W))``.

    A pixel is known only if it is in bounds and its interpolation footprint holds no ignore pixel, so labels
    are never blended with unknown area.
    """
    known = valid & (warped[:, 1] >= 1.0 - VALID_EPS)
    label = (warped[:, 0] > 0.5).float()
    return label, known


# --------------------------------------------------------------------------------------------------------------
# strong: photometric
# --------------------------------------------------------------------------------------------------------------


def _unit_frame(
    image: torch.Tensor, valid: torch.Tensor | None, value_range: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(lo, hi)`` of shape ``(B, 1, 1, 1)`` that map the image to [0, 1]."""
    b = image.shape[0]
    if value_range is not None:
        lo = image.new_full((b, 1, 1, 1), float(value_range[0]))
        hi = image.new_full((b, 1, 1, 1), float(value_range[1]))
        return lo, hi
    flat = image.reshape(b, -1)
    if valid is not None:
        m = valid.unsqueeze(1).expand_as(image).reshape(b, -1)
        lo = torch.where(m, flat, torch.full_like(flat, float("inf"))).amin(1)
        hi = torch.where(m, flat, torch.full_like(flat, float("-inf"))).amax(1)
        empty = ~m.any(1)
        lo = torch.where(empty, torch.zeros_like(lo), lo)
        hi = torch.where(empty, torch.ones_like(hi), hi)
    else:
        lo, hi = flat.amin(1), flat.amax(1)
    hi = torch.maximum(hi, lo + 1e-6)
    return lo.view(b, 1, 1, 1), hi.view(b, 1, 1, 1)


def adjust_brightness(u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Brightness on the unit interval: ``b < 0`` scales towards 0 by ``1 + b``, ``b > 0`` blends towards 1 by
    ``b``. Maps [0, 1] onto a sub-interval of [0, 1], so no clipping is needed."""
    return torch.where(b < 0, u * (1 + b), u * (1 - b) + b)


def adjust_contrast(u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Contrast on the unit interval: slope ``s = tan((c + 1) pi/4)`` around 0.5 (``c = 0`` is the identity),
    with outer segments of slope ``1/s`` so that [0, 1] maps monotonically onto [0, 1]."""
    s = torch.tan((c + 1.0) * (math.pi / 4))
    p1 = s / (2 * (1 + s))  # where the steep middle segment meets the outer ones
    p2 = 1 - p1
    middle = s * (u - 0.5) + 0.5
    low = u / s
    high = u / s + 1 - 1 / s
    return torch.where(u < p1, low, torch.where(u > p2, high, middle))


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (``(B,)``; 0 means untouched), replicate padding."""
    b, c, h, w = image.shape
    radius = max(1, math.ceil(3 * max_sigma))
    taps = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    s = sigma.to(image.dtype).clamp_min(1e-3).view(b, 1)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    # a tiny sigma gives a numerical delta kernel; force it exactly so "no blur" is bit-identical
    delta = (taps == 0).to(image.dtype).view(1, -1)
    kernel = torch.where((sigma <= 0).view(b, 1), delta, kernel)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, taps)
    x = image.reshape(1, b * c, h, w)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(b * c, 1, -1, 1), groups=b * c)
    x = F.conv2d(x, kernel.view(b * c, 1, 1, -1), groups=b * c)
    return x.reshape(b, c, h, w)


def photometric(
    image: torch.Tensor,
    generator: torch.Generator,
    config: StrongAugmentConfig = StrongAugmentConfig(),
    valid: torch.Tensor | None = None,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Random gamma, brightness, contrast (all samples) and Gaussian blur (probability ``blur_p``).

    Gamma, brightness and contrast are defined on the unit interval, as in the reference (augmax on [0, 1]
    images). The image is mapped to ``u`` in [0, 1] with a per-sample frame ``(lo, hi)``: the fixed
    ``value_range`` when the normalisation has one (``logsigmoid`` -> (0, 1)), otherwise the sample's min and max
    over its valid pixels (``zscore`` / ``scale``). Then ``u <- u ** gamma``, brightness and contrast as in
    :func:`adjust_brightness` / :func:`adjust_contrast`, and back to ``lo + u * (hi - lo)``. One draw per sample is
    shared by all bands, so band ratios (the spectral signal) change only mildly. Pixels outside ``valid`` are
    reset to 0, the fill value of :func:`strong_geometric`.

    Targets are never passed here: photometric changes do not move pixels.
    """
    b = image.shape[0]
    dev = image.device
    log_lo, log_hi = math.log(config.gamma_range[0]), math.log(config.gamma_range[1])
    gamma = torch.exp(_uniform(b, log_lo, log_hi, generator, dev)).view(b, 1, 1, 1)
    bright = _uniform(b, -config.brightness, config.brightness, generator, dev).view(b, 1, 1, 1)
    contrast = _uniform(b, -config.contrast, config.contrast, generator, dev).view(b, 1, 1, 1)
    do_blur = torch.rand(b, generator=generator, device=dev) < config.blur_p
    sigma = _uniform(b, 0.0, config.blur_sigma_max, generator, dev)
    sigma = torch.where(do_blur, sigma.clamp_min(1e-2), torch.zeros_like(sigma))

    lo, hi = _unit_frame(image, valid, value_range)
    u = ((image - lo) / (hi - lo)).clamp(0.0, 1.0)
    u = u.pow(gamma.to(u.dtype))
    u = adjust_brightness(u, bright.to(u.dtype))
    u = adjust_contrast(u, contrast.to(u.dtype))
    u = _per_band(u, generator, config)
    out = lo + u * (hi - lo)
    if config.blur_sigma_max > 0 and config.blur_p > 0:
        out = gaussian_blur(out, sigma, config.blur_sigma_max)
    if valid is not None:
        out = out * valid.unsqueeze(1).to(out.dtype)
    return out


def _per_band(u: torch.Tensor, generator: torch.Generator, config: StrongAugmentConfig) -> torch.Tensor:
    """Independent gain, offset and gamma per band and sample on the unit interval (nothing drawn when off, so
    the random stream of a run without them is unchanged)."""
    b, c = u.shape[:2]
    dev = u.device
    if config.band_gain > 0:
        gain = torch.exp(_uniform(b * c, -config.band_gain, config.band_gain, generator, dev)).view(b, c, 1, 1)
        u = u * gain.to(u.dtype)
    if config.band_offset > 0:
        u = u + _uniform(b * c, -config.band_offset, config.band_offset, generator, dev).view(b, c, 1, 1).to(u.dtype)
    if tuple(config.band_gamma) != (1.0, 1.0):
        log_lo, log_hi = math.log(config.band_gamma[0]), math.log(config.band_gamma[1])
        gamma = torch.exp(_uniform(b * c, log_lo, log_hi, generator, dev)).view(b, c, 1, 1)
        u = u.clamp(0.0, 1.0).pow(gamma.to(u.dtype))
    return u.clamp(0.0, 1.0)


def strong_augment(
    image: torch.Tensor,
    target: torch.Tensor | None,
    generator: torch.Generator,
    config: StrongAugmentConfig = StrongAugmentConfig(),
    value_range: tuple[float, float] | None = None,
    n_photometric: int | None = None,
) -> WarpResult:
    """Strong geometric warp of image and target (shared grid), then photometric changes of the image only.

    ``n_photometric``: only the first this many channels (the reflectance bands) get the photometric changes;
    auxiliary layers after them (slope, relative elevation...) are physical quantities that the atmosphere and the
    sensor do not change, so they are only warped. None: every channel.
    """
    res = strong_geometric(image, target, generator, config)
    if n_photometric is None or n_photometric >= res.image.shape[1]:
        res.image = photometric(res.image, generator, config, valid=res.valid, value_range=value_range)
    else:
        spectral = photometric(
            res.image[:, :n_photometric], generator, config, valid=res.valid, value_range=value_range
        )
        res.image = torch.cat([spectral, res.image[:, n_photometric:]], dim=1)
    return res


__all__: Sequence[str] = [
    "GeometricParams",
    "StrongAugmentConfig",
    "WarpResult",
    "apply_d4",
    "decode_label",
    "encode_label",
    "photometric",
    "sample_d4",
    "sample_geometry",
    "sampling_grid",
    "source_coordinates",
    "strong_augment",
    "strong_geometric",
    "weak_augment",
]
