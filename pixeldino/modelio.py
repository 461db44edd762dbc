"""Model files: weights in safetensors plus a JSON sidecar with everything inference needs. No pickle.

A model is two files side by side, ``model.safetensors`` (the teacher's weights and buffers) and ``model.json``,
and since 0.2 a third, its model card ``model.stac.json`` (a STAC item with the MLM extension, see
:mod:`pixeldino.modelcard`); every path is derived from the weights' path here (:func:`metadata_path`,
:func:`model_card_path`). ``model.json``::

    {
      "format": "pixeldino-model", "format_version": 1, "pixeldino_version": "0.1.0",
      "architecture": {"in_channels": 7, "width": 16, "depth": 4, "n_pseudo_classes": 24, "norm": "batch"},
      "bands": ["B02", ...], "normalisation": {"method": "logsigmoid"},
      "chip_size": 64, "threshold": 0.5,                 # calibrated on validation chips where available
      "training": {...}, "metrics": {...}, "git_revision": "abc123" | null, "created": "...",
      "init_from": {"path": "...", "model_id": "..."} | null   # the model a fine-tune started from
    }

Paths, ids and metadata need no torch (the catalog and chip stages run without it); torch and safetensors are
imported by the functions that read or write weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixeldino import __version__
from pixeldino.errors import ModelError, first_line
from pixeldino.io import atomic_output

if TYPE_CHECKING:
    import torch

    from pixeldino.model import UNet

FORMAT = "pixeldino-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("architecture", "bands", "normalisation")


def metadata_path(weights_path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar that belongs to a ``.safetensors`` weights file."""
    return Path(weights_path).with_suffix(".json")


def model_card_path(weights_path: str | os.PathLike[str]) -> Path:
    """The model card (STAC item, MLM extension) that belongs to a ``.safetensors`` weights file.

    ``model.safetensors`` -> ``model.stac.json``; the weights' JSON sidecar (``.json``) may be given instead.
    """
    return weights_file(weights_path).with_suffix(".stac.json")


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The ``.safetensors`` weights of a model given by its weights, its metadata JSON or its model card."""
    p = Path(path)
    if p.name.endswith(".stac.json"):
        return p.with_name(p.name.removesuffix(".stac.json") + ".safetensors")
    return p.with_suffix(".safetensors") if p.suffix == ".json" else p


def model_id(model_path: str | os.PathLike[str]) -> str:
    """Short identifier of a model: the first 12 hex digits of the SHA-256 of its weights file.

    ``model_path`` may be the weights, their metadata JSON or the model card.
    """
    digest = hashlib.sha256()
    with open(weights_file(model_path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def git_revision(repo_dir: str | os.PathLike[str] | None = None) -> str | None:
    """Current git commit of the source tree (None outside a git checkout)."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_model(path: str | os.PathLike[str], model: UNet, metadata: dict[str, Any]) -> Path:
    """Save ``model`` to ``path`` (safetensors) and its metadata sidecar, both atomically."""
    from safetensors.torch import save_file

    from pixeldino.terrain import aux_metadata

    meta = dict(metadata)
    missing = [k for k in ("bands", "normalisation") if k not in meta]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    meta.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pixeldino_version": __version__,
            "architecture": model.config.to_dict(),
            "created": meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    meta.setdefault("git_revision", git_revision())
    # the auxiliary layers among the bands (slope...): unit, uint16 encoding and network scaling, for readers
    meta.setdefault("auxiliary_layers", aux_metadata(meta["bands"]))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    with atomic_output(metadata_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return Path(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a model's JSON sidecar; ``path`` may be the weights, the JSON file or the model card."""
    meta_file = metadata_path(weights_file(path))
    if not meta_file.exists():
        raise ModelError(
            f"{meta_file}: model metadata not found; a model is a .safetensors file with its .json beside it"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_file}: corrupt model metadata ({exc.msg}); re-export the model") from exc
    if meta.get("format") != FORMAT or any(k not in meta for k in REQUIRED_KEYS):
        raise ModelError(
            f"{meta_file}: not a pixeldino model file (needs format={FORMAT!r} and {', '.join(REQUIRED_KEYS)})"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{meta_file}: model format {meta['format_version']} is newer than this pixeldino; upgrade it")
    _check_metadata(meta, meta_file)
    return meta


def _check_metadata(meta: dict[str, Any], meta_file: Path) -> None:
    """Refuse metadata that inference cannot trust: bands, architecture, normalisation and threshold must agree.

    A model whose band list is longer or shorter than its input channels would read the wrong bands of every
    scene (or fail deep inside the forward pass); a threshold outside [0, 1] would make every polygon or none.

    Raises:
        ModelError: naming the file, the inconsistent fields and the fix.
    """
    from pixeldino.errors import ConfigError
    from pixeldino.normalise import validate_spec

    fix = "re-export the model (pixeldino train) or restore its original .json"
    bands, arch = meta["bands"], meta["architecture"]
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) and b for b in bands):
        raise ModelError(f"{meta_file}: 'bands' must be a non-empty list of band names, got {bands!r}; {fix}")
    if not isinstance(arch, dict) or not isinstance(arch.get("in_channels"), int):
        raise ModelError(f"{meta_file}: 'architecture' has no integer 'in_channels'; {fix}")
    if len(bands) != arch["in_channels"]:
        raise ModelError(
            f"{meta_file}: {len(bands)} bands ({', '.join(bands)}) but the architecture takes "
            f"{arch['in_channels']} input channels; {fix}"
        )
    try:
        validate_spec(meta["normalisation"], len(bands), bands=bands)
    except (ConfigError, AttributeError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta_file}: invalid 'normalisation' ({first_line(exc)}); {fix}") from None
    threshold = meta.get("threshold")
    if threshold is not None and not (
        isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0.0 <= threshold <= 1.0
    ):
        raise ModelError(f"{meta_file}: 'threshold' {threshold!r} is not a probability in [0, 1]; {fix}")
    chip_size = meta.get("chip_size")
    if chip_size is not None and not (isinstance(chip_size, int) and not isinstance(chip_size, bool) and chip_size > 0):
        raise ModelError(f"{meta_file}: 'chip_size' {chip_size!r} is not a positive number of pixels; {fix}")


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Load a model for inference: returns ``(model in eval mode on device, metadata)``.

    ``path`` may be the weights, their metadata JSON or the model card.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pixeldino.model import UNetConfig, build_model

    p = weights_file(path)
    if not p.exists() and not metadata_path(p).exists():
        raise ModelError(f"{p}: model not found; train one (`pixeldino train`) or check the model path")
    meta = read_metadata(p)
    if not p.exists():
        raise ModelError(f"{p}: model weights not found next to {metadata_path(p).name}")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{p}: corrupt model weights ({first_line(exc)}); re-export or re-download the model") from exc
    try:
        model = build_model(UNetConfig(**meta["architecture"]))
    except (TypeError, ValueError) as exc:  # unknown keys or values of another pixeldino's architecture
        raise ModelError(
            f"{metadata_path(p)}: invalid 'architecture' ({first_line(exc)}); re-export the model"
        ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{p}: weights do not fit the architecture in {metadata_path(p).name} ({_state_dict_problem(exc)}); "
            "keep the .safetensors and .json of one export together, or re-export the model"
        ) from exc
    return model.to(device).eval(), meta


def _state_dict_problem(exc: BaseException) -> str:
    """The first concrete problem in torch's multi-line ``load_state_dict`` error (a size mismatch, a missing key).

    Its first line only says ``Error(s) in loading state_dict for UNet:``; the lines after it name the tensors.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
    return detail if len(detail) <= 200 else detail[:197] + "..."
