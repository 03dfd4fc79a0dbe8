"""Safe loading of weight files: safetensors, or torch files with ``weights_only=True``.

Only regular files are opened (see :func:`skipkit._io.read_regular_bytes`), and no pickled
code runs. Every problem is a :class:`~skipkit.CheckpointError` naming the file and what is
wrong with it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from skipkit._io import read_regular_bytes
from skipkit.errors import CheckpointError

__all__ = ["read_state_dict"]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ``state_dict`` (name -> tensor) from a safetensors file or a torch checkpoint.

    Torch files are read with ``torch.load(weights_only=True)``, so no pickled code runs; a
    checkpoint wrapping its weights under ``"state_dict"`` or ``"model"`` is opened. Only
    regular files are read.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: not a regular file, empty, truncated, corrupt, or holding
            something other than tensors; the message names the file and the problem.
    """
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    data = read_regular_bytes(path, what="weights file")
    if not data:
        raise CheckpointError("is empty; expected safetensors or torch.save weights", path=path)
    # a zip or a pickle; a safetensors header length may also start with byte 0x80
    torch_like = data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"
    if torch_like and not (_looks_like_safetensors(data) or path.suffix == ".safetensors"):
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or unsafe file
            raise CheckpointError(_torch_reason(exc), path=path) from None
        return _tensors(obj, path)
    if (len(data) >= 9 and data[8:9] == b"{") or path.suffix == ".safetensors":
        try:
            return dict(safetensors.torch.load(data))
        except Exception as exc:  # SafetensorError for a damaged header or body
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointError(
                f"is not a readable safetensors file (damaged or truncated: {reason})", path=path
            ) from None
    raise CheckpointError(
        "is neither a torch checkpoint nor a .safetensors file (it starts with neither a "
        "zip/pickle header nor a safetensors JSON header)",
        path=path,
    )


def _looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(data) < 10 or data[8:9] != b"{":
        return False
    return 8 + int.from_bytes(data[:8], "little") <= len(data)


def _torch_reason(exc: Exception) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text or "weights_only" in text:
        # torch goes on to advise weights_only=False, which would run the file's code: keep
        # only what was refused
        rest = [ln.strip() for ln in text.split(marker, 1)[-1].splitlines() if ln.strip()]
        inner = rest[0].split(". Please use")[0] if rest else "unsupported content"
        return (
            "holds more than tensors, and skipkit loads weights with weights_only=True so that "
            f"no pickled code runs ({inner[:200]}); re-save the weights alone: "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file(...)"
        )
    flat = " ".join(text.split())
    return f"is not a readable torch checkpoint (damaged or truncated: {flat[:200]})"


def _tensors(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise CheckpointError(f"is not a state_dict: entries {bad} are not tensors", path=path)
    raise CheckpointError(f"holds a {type(obj).__name__}, not a state_dict", path=path)
