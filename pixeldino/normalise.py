"""Radiometric normalisation of Sentinel-2 digital numbers (reflectance x 10000) into network inputs.

Three methods, chosen in config and stored verbatim in the model file so inference cannot disagree with training:

* ``logsigmoid`` — the PixelDINO paper's ``sigmoid(2.5 * (ln(1 + 0.005 * DN) - 2.1))``; needs no statistics.
* ``zscore`` — per-band robust z-score ``(DN - median) / (1.4826 * MAD)`` with statistics from the training chips.
* ``scale`` — fixed reflectance scaling ``DN * scale`` (default 1e-4, i.e. reflectance).

Nodata pixels (DN == 0 in every band) are mapped to 0 by the callers, which know the mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pixeldino.errors import ConfigError

METHODS = ("logsigmoid", "zscore", "scale")


def validate_spec(spec: dict[str, Any], n_bands: int | None = None) -> dict[str, Any]:
    """Check a normalisation spec and return a clean copy (statistics as float lists)."""
    method = spec.get("method")
    if method not in METHODS:
        raise ConfigError(f"normalisation method {method!r} is not one of {', '.join(METHODS)}")
    out: dict[str, Any] = {"method": method}
    if method == "zscore":
        for key in ("center", "scale"):
            if key not in spec:
                raise ConfigError(f"zscore normalisation needs per-band '{key}' statistics (compute_zscore_stats)")
            values = [float(v) for v in spec[key]]
            if n_bands is not None and len(values) != n_bands:
                raise ConfigError(f"zscore '{key}' has {len(values)} values for {n_bands} bands")
            out[key] = values
        if any(s <= 0 for s in out["scale"]):
            raise ConfigError("zscore 'scale' statistics must be positive")
    elif method == "scale":
        out["factor"] = float(spec.get("factor", 1e-4))
    return out


def normalise(dn: np.ndarray, spec: dict[str, Any], band_axis: int = 0) -> np.ndarray:
    """Normalise an array of DNs (any integer or float dtype) to float32 network input.

    Args:
        dn: array with the band axis at ``band_axis``.
        spec: a normalisation spec (see module docs).
        band_axis: which axis holds the bands (needed for per-band statistics).
    """
    x = np.asarray(dn, dtype=np.float32)
    method = spec["method"]
    if method == "logsigmoid":
        z = 2.5 * (np.log1p(0.005 * np.maximum(x, 0.0)) - 2.1)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    if method == "scale":
        return (x * np.float32(spec.get("factor", 1e-4))).astype(np.float32)
    if method == "zscore":
        shape = [1] * x.ndim
        shape[band_axis] = -1
        center = np.asarray(spec["center"], dtype=np.float32).reshape(shape)
        scale = np.asarray(spec["scale"], dtype=np.float32).reshape(shape)
        return ((x - center) / scale).astype(np.float32)
    raise ConfigError(f"normalisation method {method!r} is not one of {', '.join(METHODS)}")


def compute_zscore_stats(samples: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Any]:
    """Robust per-band statistics from training pixels.

    Args:
        samples: ``(N, C, H, W)`` or ``(C, H, W)`` DN array.
        valid: optional boolean array broadcastable to ``samples`` without its band axis; False pixels are skipped.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    per_band = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    if valid is not None:
        mask = np.broadcast_to(np.asarray(valid, dtype=bool).reshape(x.shape[0], *x.shape[2:]), (x.shape[0], *x.shape[2:]))
        per_band = per_band[:, mask.reshape(-1)]
    if per_band.shape[1] == 0:
        raise ConfigError("no valid pixels to compute zscore statistics from")
    center = np.median(per_band, axis=1)
    mad = np.median(np.abs(per_band - center[:, None]), axis=1)
    scale = np.maximum(1.4826 * mad, 1.0)  # DN units: never divide by ~0 on a constant band
    return {"method": "zscore", "center": center.tolist(), "scale": scale.tolist()}
