"""Crash-safe checkpoints: safetensors tensors + JSON state, verified, with a fallback.

A checkpoint of epoch ``e`` is three files in the run folder's ``checkpoints/``: the weights
and the state tensors (optimizer buffers, RNG states) as safetensors, and ``epoch{e}.json``
holding everything else (with the SHA-256 of both tensor files). The JSON is written last, so
a run killed at any moment leaves the previous complete checkpoint in place; the two newest
are kept, and :func:`read_checkpoint` falls back to the older one when the newer does not
verify::

    out_dir/
      skipkit-run.json                      the run's manifest: every file and its SHA-256
      checkpoint.json                       a copy of the newest epoch JSON, for people
      checkpoints/epoch0003.json            epoch, step, optimizer groups, RNG, history, config
      checkpoints/epoch0003-model.safetensors
      checkpoints/epoch0003-state.safetensors

Nothing here unpickles: tensors come from safetensors, the rest from JSON. The atomic-write
helpers live in :mod:`skipkit._io` and are re-exported here for existing imports.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.torch
import torch
from torch import nn

from skipkit._io import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    read_regular_bytes,
    sha256_bytes,
)
from skipkit._runs import RunFolder, read_manifest
from skipkit.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_state",
    "encode_state",
    "read_checkpoint",
    "rng_state",
    "save_weights",
    "set_rng_state",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "skipkit-checkpoint/1"
_TENSOR = "__tensor__"
_ITEMS = "__items__"


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save ``model.state_dict()`` (parameters and buffers) as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors.torch.save(tensors))


def encode_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Turn nested dicts/lists/tensors into JSON, moving each tensor into ``tensors``.

    A tensor becomes ``{"__tensor__": key}``; a dict with non-string keys (optimizer state is
    keyed by parameter index) becomes ``{"__items__": [[key, value], ...]}``.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {_ITEMS: [[k, encode_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_ITEMS}:
            return {k: decode_state(v, tensors) for k, v in obj[_ITEMS]}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    return obj


KEEP = 2
"""Checkpoints kept: the newest, and one to fall back to if it is damaged."""

_EPOCH_JSON = re.compile(r"^epoch(\d{4,})\.json$")
_EPOCH_FILE = re.compile(
    r"^checkpoints/epoch(\d{4,})(?:-model\.safetensors|-state\.safetensors|\.json)$"
)


class Checkpoint(NamedTuple):
    """What :func:`read_checkpoint` found: the epoch, the weights, the decoded state, the
    epoch JSON it came from, and the newer checkpoints skipped as damaged (with why)."""

    epoch: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path
    skipped: list[str]


def write_checkpoint(run: RunFolder, epoch: int, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write the checkpoint of ``epoch`` into ``run`` (see the module docstring).

    ``state`` is any nest of JSON values and tensors (optimizer, RNG, ...). Checkpoints older
    than the :data:`KEEP` newest are removed once the new one is in place.

    Returns:
        the path of the epoch JSON.
    """
    stem = f"checkpoints/epoch{epoch:04d}"
    model_name, state_name, meta_name = (
        f"{stem}-model.safetensors",
        f"{stem}-state.safetensors",
        f"{stem}.json",
    )
    run.expect(model_name, state_name, meta_name, "checkpoint.json")
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    model_bytes = safetensors.torch.save(weights)
    tensors: dict[str, torch.Tensor] = {}
    doc = encode_state(state, "state", tensors)
    state_bytes = safetensors.torch.save(tensors)
    run.write_bytes(model_name, model_bytes, save=False)
    run.write_bytes(state_name, state_bytes, save=False)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": model_name,
        "model_sha256": sha256_bytes(model_bytes),
        "tensors": state_name,
        "tensors_sha256": sha256_bytes(state_bytes),
        "state": doc,
    }
    text = json.dumps(meta, indent=1, allow_nan=False) + "\n"
    path = run.write_text(meta_name, text, save=False)
    run.write_text("checkpoint.json", text, save=False)
    keep = sorted(_epochs(run.files), reverse=True)[:KEEP]
    old = [n for n in run.files if _epoch_of(n) is not None and _epoch_of(n) not in keep]
    run.remove(*old, save=False)
    run.commit()
    return path


def _epoch_of(name: str) -> int | None:
    m = re.match(
        r"^checkpoints/epoch(\d{4,})(?:-model\.safetensors|-state\.safetensors|\.json)$", name
    )
    return int(m.group(1)) if m else None


def _epochs(names: Any) -> set[int]:
    return {e for e in (_epoch_of(n) for n in names) if e is not None}


def read_checkpoint(out_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """The newest checkpoint in ``out_dir`` that verifies, or ``None`` when there is none.

    Each candidate's JSON, weights and state must be regular files matching their recorded
    SHA-256 (in the run manifest and the epoch JSON); a damaged newer one is skipped, and
    ``skipped`` says why.

    Raises:
        CheckpointError: there are checkpoints, but none verifies (each reason listed).
    """
    out = Path(out_dir)
    folder = out / "checkpoints"
    try:
        manifest = read_manifest(out)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: {exc}", path=out) from None
    files: dict[str, str | None] = manifest["files"] if manifest else {}
    found = set()
    if folder.is_dir():
        found = {int(m.group(1)) for p in folder.iterdir() if (m := _EPOCH_JSON.match(p.name))}
    candidates = sorted(found | _epochs(n for n, h in files.items() if h), reverse=True)
    skipped: list[str] = []
    for epoch in candidates:
        name = f"checkpoints/epoch{epoch:04d}.json"
        try:
            weights, state = _load(out, name, files)
        except CheckpointError as exc:
            skipped.append(f"epoch {epoch}: {exc}")
            continue
        return Checkpoint(epoch, weights, state, out / name, skipped)
    if skipped:
        raise CheckpointError(
            "no checkpoint verifies (" + "; ".join(skipped) + "); start again with --overwrite",
            path=out,
        )
    return None


def _load(
    out: Path, name: str, files: dict[str, str | None]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = out / name
    raw = read_regular_bytes(path, what="checkpoint file")
    if files.get(name) is not None and sha256_bytes(raw) != files[name]:
        raise CheckpointError("does not match its checksum in the run manifest", path=path)
    meta = read_json(path, what="checkpoint file")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"is not a {CHECKPOINT_FORMAT} checkpoint", path=path)
    try:
        loaded = []
        for key in ("model", "tensors"):
            file = out / str(meta[key])
            data = read_regular_bytes(file, what="checkpoint file")
            if sha256_bytes(data) != meta[f"{key}_sha256"]:
                raise CheckpointError("does not match its checksum (damaged)", path=file)
            try:
                loaded.append(dict(safetensors.torch.load(data)))
            except Exception as exc:  # SafetensorError for a damaged file
                raise CheckpointError(f"is a damaged safetensors file ({exc})", path=file) from None
        state = decode_state(meta["state"], loaded[1])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"is incomplete (missing {exc})", path=path) from None
    if not isinstance(state, dict):
        raise CheckpointError("holds no training state", path=path)
    return loaded[0], state


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) generator states, JSON + tensors."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
