"""Model files: weights in safetensors plus a JSON sidecar with everything inference needs. No pickle.

A model is two files side by side: ``model.safetensors`` (the teacher's weights and buffers) and ``model.json``::

    {
      "format": "pixeldino-model", "format_version": 1, "pixeldino_version": "0.1.0",
      "architecture": {"in_channels": 7, "width": 16, "depth": 4, "n_pseudo_classes": 24, "norm": "batch"},
      "bands": ["B02", ...], "normalisation": {"method": "logsigmoid"},
      "chip_size": 64, "threshold": 0.5,                 # calibrated on validation chips where available
      "training": {...}, "metrics": {...}, "git_revision": "abc123" | null, "created": "..."
    }
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixeldino import __version__
from pixeldino.errors import ModelError, first_line
from pixeldino.io import atomic_output
from pixeldino.model import UNet, UNetConfig, build_model

FORMAT = "pixeldino-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("architecture", "bands", "normalisation")


def metadata_path(weights_path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar that belongs to a ``.safetensors`` weights file."""
    return Path(weights_path).with_suffix(".json")


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
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    with atomic_output(metadata_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return Path(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a model's JSON sidecar; ``path`` may be the weights or the JSON file."""
    p = Path(path)
    meta_file = p if p.suffix == ".json" else metadata_path(p)
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
    return meta


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Load a model for inference: returns ``(model in eval mode on device, metadata)``."""
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    meta = read_metadata(p)
    if not p.exists():
        raise ModelError(f"{p}: model weights not found next to {metadata_path(p).name}")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{p}: corrupt model weights ({exc}); re-export or re-download the model") from exc
    model = build_model(UNetConfig(**meta["architecture"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{p}: weights do not fit the architecture in its metadata ({first_line(exc)})") from exc
    return model.to(device).eval(), meta
