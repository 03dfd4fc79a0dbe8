"""Crash-safe files: atomic writes, safetensors weights, JSON + safetensors training state.

A checkpoint is three files. The weights and the state tensors (optimizer buffers, RNG states)
go to safetensors files named after the epoch; ``checkpoint.json`` holds everything else and
points at them. It is written last, so a run killed at any moment leaves the previous complete
checkpoint in place::

    out_dir/
      checkpoint.json                      epoch, step, optimizer groups, schedule, RNG, history
      checkpoints/epoch0003-model.safetensors
      checkpoints/epoch0003-state.safetensors

Nothing here unpickles: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_state",
    "encode_state",
    "load_weights",
    "read_checkpoint",
    "remove_run_files",
    "save_weights",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "skipkit-checkpoint/1"
_TENSOR = "__tensor__"
_ITEMS = "__items__"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path``: temp file in the same folder, fsync, ``os.replace``.

    Readers see the old file or the complete new one, never a partial file; a failed write
    leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform (Windows)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save ``model.state_dict()`` (parameters and buffers) as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors.torch.save(tensors))


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load weights saved by :func:`save_weights` (or any safetensors state dict) into ``model``.

    A ``.pt``/``.pth`` file is read with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix in (".pt", ".pth"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = safetensors.torch.load_file(str(path))
    model.load_state_dict(state, strict=strict)


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


def write_checkpoint(
    out_dir: str | os.PathLike[str], epoch: int, model: nn.Module, state: dict[str, Any]
) -> Path:
    """Write the checkpoint of ``epoch`` (see the module docstring); returns the JSON's path.

    ``state`` is any nest of JSON values and tensors (optimizer, RNG, ...). Older checkpoint
    files and temporary files of interrupted writes are removed once the new one is in place.
    """
    out = Path(out_dir)
    folder = out / "checkpoints"
    stem = f"epoch{epoch:04d}"
    model_file, state_file = (
        folder / f"{stem}-model.safetensors",
        folder / f"{stem}-state.safetensors",
    )
    save_weights(model, model_file)
    tensors: dict[str, torch.Tensor] = {}
    doc = encode_state(state, "state", tensors)
    atomic_write_bytes(state_file, safetensors.torch.save(tensors))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": model_file.relative_to(out).as_posix(),
        "tensors": state_file.relative_to(out).as_posix(),
        "state": doc,
    }
    index = out / "checkpoint.json"
    atomic_write_text(index, json.dumps(meta, indent=1) + "\n")
    for p in folder.iterdir():
        if p not in (model_file, state_file):
            p.unlink(missing_ok=True)
    return index


RUN_FILES = ("checkpoint.json", "metrics.csv", "metrics.json", "model.safetensors")


def remove_run_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete what a previous run wrote to ``out_dir`` (its checkpoint, metrics, weights).

    A fresh run in an old folder must not leave the old checkpoint behind: a later
    ``resume`` would continue the wrong run. Other files are left alone.

    Returns:
        the removed paths.
    """
    out = Path(out_dir)
    removed = [out / n for n in RUN_FILES if (out / n).is_file()]
    folder = out / "checkpoints"
    if folder.is_dir():
        removed += [p for p in folder.iterdir() if p.name.endswith((".safetensors", ".tmp"))]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def read_checkpoint(
    out_dir: str | os.PathLike[str],
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(epoch, model_state_dict, state)`` from ``out_dir/checkpoint.json``, or ``None``."""
    out = Path(out_dir)
    index = out / "checkpoint.json"
    if not index.is_file():
        return None
    meta = json.loads(index.read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{index} is not a {CHECKPOINT_FORMAT} checkpoint")
    weights = safetensors.torch.load_file(str(out / meta["model"]))
    tensors = safetensors.torch.load_file(str(out / meta["tensors"]))
    return int(meta["epoch"]), weights, decode_state(meta["state"], tensors)
