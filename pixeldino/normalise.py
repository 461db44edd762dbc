"""Radiometric normalisation of Sentinel-2 digital numbers (reflectance x 10000) into network inputs.

Three methods, chosen in config and stored verbatim in the model file so inference cannot disagree with training:

* ``logsigmoid`` — the PixelDINO paper's ``sigmoid(2.5 * (ln(1 + 0.005 * DN) - 2.1))``; needs no statistics.
* ``zscore`` — per-band robust z-score ``(DN - median) / (1.4826 * MAD)`` with statistics from the training chips.
* ``scale`` — fixed reflectance scaling ``DN * scale`` (default 1e-4, i.e. reflectance).

Each method's formula is written once (:func:`_formula`, against a small table of array operations) and evaluated
by numpy (:func:`normalise`, inference) and by torch (:func:`normalise_torch`, training on any device); the
inference look-up table (:func:`lookup_table`) holds the numpy values of every 8- or 16-bit DN.

**Auxiliary layers.** A model whose input bands end with auxiliary layers (``slope``, ``relative_elevation``...,
see :mod:`pixeldino.terrain`) has an ``aux`` list in its spec, one entry per layer, for the last ``len(aux)``
bands::

    {"method": "logsigmoid", "aux": [{"band": "slope", "scale": 0.01, "offset": -0.01, "transform": "linear",
                                      "center": 0.0, "divisor": 90.0, "clip": [0.0, 1.0]}, ...]}

The method applies to the Sentinel-2 bands before them (``zscore`` statistics: one per Sentinel-2 band); each
layer is decoded from its uint16 encoding and scaled instead: ``value = DN * scale + offset``, ``cos(value)`` in
degrees for ``transform: cos``, then ``clip((value - center) / divisor, *clip)``, and DN 0 (the layer's no data)
is 0. The numbers are stored in the spec itself (:func:`with_aux` takes them from the encoding table), so a model
decodes its layers as it was trained even if the table changes later.

**Nodata.** A pixel whose bands all hold the nodata DN (0, as in Sentinel-2 L2A scenes and in chip stores) carries
no measurement and enters the network as 0, in training and in inference alike; a DN of 0 in only some bands of a
pixel is a measurement and is normalised by the formula like any other DN. Both functions take ``nodata``: with
``nodata=0`` they set such pixels to 0 themselves (training calls :func:`normalise_torch` so, see
:data:`NODATA_DN`); with ``nodata=None`` (the default) they apply the formula to every value and leave nodata to
the caller. Inference does the latter: a look-up table entry sees one band of one pixel and cannot know whether the
pixel's other bands are 0, so the predictor looks up the formula's values and then zeroes the pixels that hold the
scene's nodata value (0 for Sentinel-2) in every band: the same numbers as training for the same DNs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pixeldino.errors import ConfigError

if TYPE_CHECKING:
    import torch

METHODS = ("logsigmoid", "zscore", "scale")
#: The DN of a pixel without data, in every band (Sentinel-2 L2A scenes, the fetched scenes, chip stores).
NODATA_DN = 0


#: The keys of one ``aux`` entry of a spec (module docs).
AUX_KEYS = ("band", "scale", "offset", "transform", "center", "divisor", "clip")
AUX_TRANSFORMS = ("linear", "cos")


def _aux_entry(entry: Any) -> dict[str, Any]:
    """A checked, clean copy of one ``aux`` entry."""
    if not isinstance(entry, Mapping) or any(k not in entry for k in AUX_KEYS):
        raise ConfigError(f"an 'aux' normalisation entry needs the keys {', '.join(AUX_KEYS)}; got {entry!r}")
    if entry["transform"] not in AUX_TRANSFORMS:
        raise ConfigError(f"aux entry {entry['band']!r}: transform {entry['transform']!r} is not linear or cos")
    clip = [float(v) for v in entry["clip"]]
    divisor = float(entry["divisor"])
    if divisor <= 0 or len(clip) != 2 or clip[0] > clip[1]:
        raise ConfigError(f"aux entry {entry['band']!r}: divisor must be positive and clip a [low, high] pair")
    return {
        "band": str(entry["band"]),
        "scale": float(entry["scale"]),
        "offset": float(entry["offset"]),
        "transform": str(entry["transform"]),
        "center": float(entry["center"]),
        "divisor": divisor,
        "clip": clip,
    }


def validate_spec(
    spec: Mapping[str, Any], n_bands: int | None = None, *, bands: Sequence[str] | None = None
) -> dict[str, Any]:
    """Check a normalisation spec and return a clean copy (statistics as float lists).

    Args:
        spec: the spec.
        n_bands: the number of input bands (all of them, auxiliary layers included), when known.
        bands: the input band names, when known: the ``aux`` entries must name the last of them, in order.

    Raises:
        ConfigError: an unknown method, missing or mis-sized zscore statistics, a non-positive zscore scale, or
            ``aux`` entries that are malformed or do not name the last bands.
    """
    method = spec.get("method")
    if method not in METHODS:
        raise ConfigError(f"normalisation method {method!r} is not one of {', '.join(METHODS)}")
    out: dict[str, Any] = {"method": method}
    aux = [_aux_entry(e) for e in spec.get("aux") or []]
    if bands is not None:
        n_bands = len(bands) if n_bands is None else n_bands
        tail = [str(b) for b in bands[len(bands) - len(aux) :]] if aux else []
        if [e["band"] for e in aux] != tail or len(aux) > len(bands):
            raise ConfigError(
                f"normalisation 'aux' entries ({', '.join(e['band'] for e in aux) or 'none'}) do not name the last "
                f"input bands ({', '.join(map(str, bands))})"
            )
    n_spectral = None if n_bands is None else n_bands - len(aux)
    if n_spectral is not None and n_spectral < 0:
        raise ConfigError(f"normalisation has {len(aux)} 'aux' entries for {n_bands} bands")
    if method == "zscore":
        for key in ("center", "scale"):
            if key not in spec:
                raise ConfigError(f"zscore normalisation needs per-band '{key}' statistics (compute_zscore_stats)")
            values = [float(v) for v in spec[key]]
            if n_spectral is not None and len(values) != n_spectral:
                raise ConfigError(
                    f"zscore '{key}' has {len(values)} values for {n_spectral} bands"
                    + (f" (and {len(aux)} auxiliary layers, which have their own scaling)" if aux else "")
                )
            out[key] = values
        if any(s <= 0 for s in out["scale"]):
            raise ConfigError("zscore 'scale' statistics must be positive")
    elif method == "scale":
        out["factor"] = float(spec.get("factor", 1e-4))
    if aux:
        out["aux"] = aux
    return out


def with_aux(spec: Mapping[str, Any], bands: Sequence[str]) -> dict[str, Any]:
    """``spec`` with the ``aux`` entries of the auxiliary layers among ``bands`` (from the encoding table).

    A spec that already has ``aux`` entries (a fine-tune's parent) keeps them: they must name the same layers.

    Raises:
        ConfigError: the bands' layers are not their tail, or the spec's ``aux`` entries name other layers.
    """
    from pixeldino.terrain import aux_normalisation

    wanted = aux_normalisation(bands)
    out = dict(spec)
    if spec.get("aux"):
        have = [e.get("band") for e in spec["aux"]]
        if have != [e["band"] for e in wanted]:
            raise ConfigError(
                f"normalisation 'aux' entries ({', '.join(map(str, have))}) are not the auxiliary layers of the "
                f"bands ({', '.join(e['band'] for e in wanted) or 'none'})"
            )
        return out
    if wanted:
        out["aux"] = wanted
    else:
        out.pop("aux", None)
    return out


def n_aux(spec: Mapping[str, Any]) -> int:
    """How many of the last input bands are auxiliary layers (normalised by their ``aux`` entry)."""
    return len(spec.get("aux") or [])


@dataclass(frozen=True)
class _Ops:
    """The few array operations the formulas need, for one array library.

    Everything else in the formulas is arithmetic that numpy arrays and torch tensors share. Each library keeps
    its own sigmoid and its own way to make constants, so that both evaluate exactly what they always did.
    """

    log1p: Callable[[Any], Any]
    sigmoid: Callable[[Any], Any]
    clamp_min: Callable[[Any, float], Any]
    #: A scalar constant in the arithmetic of the array (``scale``'s factor).
    scalar: Callable[[float], Any]
    #: Per-band constants ``(values, like, band_axis)`` shaped to broadcast against ``like``.
    per_band: Callable[[Sequence[float], Any, int], Any]
    #: Pixels whose every band equals a value ``(array, value, band_axis)``, keeping the band axis (size 1).
    all_bands_equal: Callable[[Any, float, int], Any]
    #: ``array`` with 0 where ``mask`` is true.
    zero_where: Callable[[Any, Any], Any]
    #: Elementwise ``max(array, low)`` and ``min(array, high)`` with scalar bounds.
    clamp: Callable[[Any, float, float], Any]
    cos: Callable[[Any], Any]
    #: Arrays joined along an axis ``(arrays, axis)``.
    concat: Callable[[Sequence[Any], int], Any]


def _band_shape(ndim: int, band_axis: int) -> list[int]:
    shape = [1] * ndim
    shape[band_axis] = -1
    return shape


_NUMPY = _Ops(
    log1p=np.log1p,
    sigmoid=lambda z: 1.0 / (1.0 + np.exp(-z)),
    clamp_min=np.maximum,
    scalar=np.float32,
    per_band=lambda values, like, axis: np.asarray(values, dtype=np.float32).reshape(_band_shape(like.ndim, axis)),
    all_bands_equal=lambda x, value, axis: (x == value).all(axis=axis, keepdims=True),
    zero_where=lambda x, mask: np.where(mask, np.float32(0.0), x),
    clamp=lambda x, low, high: np.clip(x, np.float32(low), np.float32(high)),
    cos=np.cos,
    concat=lambda arrays, axis: np.concatenate(arrays, axis=axis),
)


@functools.cache
def _torch_ops() -> _Ops:
    # imported on first use: inference and the numpy callers need not load torch for this module
    import torch

    return _Ops(
        log1p=torch.log1p,
        sigmoid=torch.sigmoid,
        clamp_min=torch.clamp_min,
        scalar=float,
        per_band=lambda values, like, axis: torch.tensor(values, dtype=like.dtype, device=like.device).view(
            _band_shape(like.ndim, axis)
        ),
        all_bands_equal=lambda x, value, axis: (x == value).all(dim=axis, keepdim=True),
        zero_where=lambda x, mask: x.masked_fill(mask, 0.0),
        clamp=lambda x, low, high: torch.clamp(x, low, high),
        cos=torch.cos,
        concat=lambda arrays, axis: torch.cat(list(arrays), dim=axis),
    )


def _take(x: Any, start: int, stop: int, band_axis: int) -> Any:
    """Bands ``start:stop`` of ``x`` (numpy arrays and torch tensors index alike)."""
    index = [slice(None)] * x.ndim
    index[band_axis] = slice(start, stop)
    return x[tuple(index)]


def _aux_formula(x: Any, entry: Mapping[str, Any], ops: _Ops) -> Any:
    """One auxiliary layer's network input from its DNs: decoded, scaled and clipped; DN 0 (no data) is 0."""
    value = x * ops.scalar(entry["scale"]) + ops.scalar(entry["offset"])
    if entry["transform"] == "cos":
        value = ops.cos(value * ops.scalar(np.pi / 180.0))
    low, high = entry["clip"]
    scaled = ops.clamp((value - ops.scalar(entry["center"])) / ops.scalar(entry["divisor"]), low, high)
    return ops.zero_where(scaled, x == 0)


def _formula(x: Any, spec: Mapping[str, Any], band_axis: int, ops: _Ops) -> Any:
    """The normalised value of every element of ``x`` (float DNs) by ``spec``; no nodata handling.

    The method normalises the Sentinel-2 bands; the last ``len(spec["aux"])`` bands are auxiliary layers, each
    normalised by its own entry (module docs).
    """
    aux = spec.get("aux") or []
    if not aux:
        return _method_formula(x, spec, band_axis, ops)
    axis = band_axis % x.ndim
    n = x.shape[axis]
    n_spectral = n - len(aux)
    parts = [_method_formula(_take(x, 0, n_spectral, axis), spec, axis, ops)] if n_spectral > 0 else []
    parts += [_aux_formula(_take(x, n_spectral + j, n_spectral + j + 1, axis), e, ops) for j, e in enumerate(aux)]
    return ops.concat(parts, axis)


def _method_formula(x: Any, spec: Mapping[str, Any], band_axis: int, ops: _Ops) -> Any:
    """The method's formula (``logsigmoid``, ``scale``, ``zscore``) on every element of ``x``."""
    method = spec["method"]
    if method == "logsigmoid":
        return ops.sigmoid(2.5 * (ops.log1p(0.005 * ops.clamp_min(x, 0.0)) - 2.1))
    if method == "scale":
        return x * ops.scalar(spec.get("factor", 1e-4))
    if method == "zscore":
        return (x - ops.per_band(spec["center"], x, band_axis)) / ops.per_band(spec["scale"], x, band_axis)
    raise ConfigError(f"normalisation method {method!r} is not one of {', '.join(METHODS)}")


def _normalised(x: Any, spec: Mapping[str, Any], band_axis: int, nodata: float | None, ops: _Ops) -> Any:
    out = _formula(x, spec, band_axis, ops)
    if nodata is not None:
        out = ops.zero_where(out, ops.all_bands_equal(x, nodata, band_axis))
    return out


def normalise(
    dn: np.ndarray, spec: Mapping[str, Any], band_axis: int = 0, *, nodata: float | None = None
) -> np.ndarray:
    """Normalise an array of DNs (any integer or float dtype) to float32 network input.

    Args:
        dn: array with the band axis at ``band_axis``.
        spec: a normalisation spec (see module docs).
        band_axis: which axis holds the bands (needed for per-band statistics and for nodata).
        nodata: pixels with this DN in every band become 0 (None: every value is normalised; see module docs).
    """
    x = np.asarray(dn, dtype=np.float32)
    return np.asarray(_normalised(x, spec, band_axis, nodata, _NUMPY), dtype=np.float32)


def normalise_torch(
    dn: torch.Tensor, spec: Mapping[str, Any], band_axis: int = 1, *, nodata: float | None = None
) -> torch.Tensor:
    """Torch twin of :func:`normalise`: the same formula and nodata handling for float DNs on any device.

    Args:
        dn: float tensor of DNs, by default ``(B, C, H, W)``.
        spec: a normalisation spec (see module docs).
        band_axis: which dimension holds the bands.
        nodata: pixels with this DN in every band become 0 (None: every value is normalised).
    """
    out: torch.Tensor = _normalised(dn, spec, band_axis, nodata, _torch_ops())
    return out


def lookup_table(spec: Mapping[str, Any], n_bands: int, dtype: np.dtype[Any] | str) -> np.ndarray | None:
    """``(n_bands, 2**bits)`` table of :func:`normalise`'s value of every DN of an 8- or 16-bit unsigned scene.

    Entry ``[b, v]`` is the normalised DN ``v`` of band ``b`` (formula only: nodata pixels are the caller's to
    zero, see the module docs). Normalising by table look-up is an order of magnitude faster than computing
    log/exp per pixel and gives the same float32 values. None for other data types (normalised directly).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return None
    dn = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    return np.ascontiguousarray(normalise(np.broadcast_to(dn, (n_bands, dn.size)), spec, band_axis=0))


def compute_zscore_stats(samples: np.ndarray, valid: np.ndarray | None = None, *, n_aux: int = 0) -> dict[str, Any]:
    """Robust per-band statistics from training pixels.

    Args:
        samples: ``(N, C, H, W)`` or ``(C, H, W)`` DN array.
        valid: optional boolean array broadcastable to ``samples`` without its band axis; False pixels are skipped.
        n_aux: the last ``n_aux`` bands are auxiliary layers (scaled by their ``aux`` entry): no statistics.
    """
    if n_aux:
        samples = np.asarray(samples)
        samples = samples[:, : samples.shape[1] - n_aux] if samples.ndim == 4 else samples[: samples.shape[0] - n_aux]
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    per_band = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    if valid is not None:
        mask = np.broadcast_to(
            np.asarray(valid, dtype=bool).reshape(x.shape[0], *x.shape[2:]), (x.shape[0], *x.shape[2:])
        )
        per_band = per_band[:, mask.reshape(-1)]
    if per_band.shape[1] == 0:
        raise ConfigError("no valid pixels to compute zscore statistics from")
    center = np.median(per_band, axis=1)
    mad = np.median(np.abs(per_band - center[:, None]), axis=1)
    scale = np.maximum(1.4826 * mad, 1.0)  # DN units: never divide by ~0 on a constant band
    return {"method": "zscore", "center": center.tolist(), "scale": scale.tolist()}
