"""Files that survive crashes, and safe reading.

- **Atomic writes**: :func:`atomic_write_bytes` writes a temporary file in the same folder,
  fsyncs it and renames it over the target, so a reader sees the old or the new file, never
  a partial one.
- **Safe loading**: :func:`read_state_dict` reads safetensors, or torch files with
  ``weights_only=True``; only regular files are opened (a pipe or a device would block or
  never end). Every problem is a :class:`~skipkit.CheckpointError` naming the file.

Run folders (manifest, lock, the never-lose-a-result rules) are in :mod:`skipkit._runs`.
This module imports no torch at import time (the command line's ``--help`` stays fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skipkit.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "read_json",
    "read_regular_bytes",
    "read_state_dict",
    "sha256_bytes",
    "sha256_file",
]

# ----------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path``: temp file in the same folder, fsync, ``os.replace``.

    Readers see the old file or the complete new one, never a partial file; a failed write
    leaves no temporary file behind (a killed one leaves ``.<name>.<random>.tmp``, which
    :func:`skipkit._runs.open_run` removes at the next start).
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


# ------------------------------------------------------------------------------ safe reading


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a regular file (see :func:`read_regular_bytes`)."""
    return sha256_bytes(read_regular_bytes(path))


def read_regular_bytes(path: str | os.PathLike[str], *, what: str = "file") -> bytes:
    """The bytes of a regular file; anything else raises :class:`CheckpointError`.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` before reading, so a
    named pipe or a device is refused instead of blocking or reading forever.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointError(f"no such {what}", path=path) from None
    except IsADirectoryError:
        raise CheckpointError(f"is a folder, not a {what}", path=path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot open: {exc.strerror or exc}", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (pipe, device?)"
            raise CheckpointError(f"is {kind}; expected a {what}", path=path)
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", path=path) from None
    finally:
        if fd >= 0:
            os.close(fd)


def read_json(path: str | os.PathLike[str], *, what: str = "JSON file") -> Any:
    """Parse a regular JSON file; a missing, non-regular or malformed one raises
    :class:`CheckpointError`."""
    data = read_regular_bytes(path, what=what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"is not valid JSON ({exc})", path=path) from None


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
    import io

    import torch

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
        import safetensors.torch

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
    import torch

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
