"""Checkpoints: safetensors weights with the resolved config (JSON) in the file's metadata.

Inference weights never go through pickle. Optimizer / step / RNG state lives in a separate train-state file
(``save_train_state``), written atomically so a kill mid-write never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lpm.errors import LpmError
from lpm.fsutil import atomic_path


class CheckpointError(LpmError, RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                    kind: str, extra: dict[str, Any] | None = None) -> Path:
    """Write weights + config atomically.

    Args:
        state_dict: tensors to save (made contiguous and detached; shared storage is copied).
        config: the resolved config as a JSON-safe dict; stored under metadata key ``config``.
        kind: what the weights are (``vae``, ``dit``, ...); checked on load.
        extra: more JSON-safe metadata (step, data seeds, ...), stored under ``extra``.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {"config": json.dumps(config), "kind": kind, "format": "lpm-1"}
    if extra:
        meta["extra"] = json.dumps(extra)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a checkpoint: ``kind``, ``config`` (dict), ``extra`` (dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from None
    if "config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no 'config' in its metadata (not an lpm checkpoint?)")
    return {
        "kind": meta.get("kind", ""),
        "config": json.loads(meta["config"]),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def load_checkpoint(path: str | Path, kind: str | None = None,
                    device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and config; when ``kind`` is given it must match the stored kind.

    Returns:
        (state_dict, metadata) where metadata has ``kind``, ``config`` and ``extra``.
    """
    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds {meta['kind']!r} weights, expected {kind!r}")
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=device) as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, meta


def load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: every key present with the same shape, or a clear error listing the differences."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
        if shape:
            parts.append(f"shape mismatches ({len(shape)}): {'; '.join(shape[:8])}")
        raise CheckpointError(f"{source} does not fit the model: " + " | ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Optimizer / step / RNG state, written atomically with torch.save (our own files only)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Load a train-state file this project wrote (weights_only where possible)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def run_sources(spec: str | Path) -> dict[str, str]:
    """The data set and VAE a run was trained on (``RUN/sources.json``, written by the trainers), if recorded;
    ``spec`` is the run directory or a checkpoint file in it."""
    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    try:
        sources = json.loads((folder / "sources.json").read_text())
    except (OSError, ValueError):
        return {}
    return sources if isinstance(sources, dict) else {}
