"""Files that survive crashes, and safe reading.

- **Atomic writes**: :func:`atomic_write_bytes` writes a temporary file in the same folder,
  fsyncs it and renames it over the target, so a reader sees the old or the new file, never
  a partial one.
- **Safe reading**: only regular files are opened (a pipe or a device would block or never
  end). Every problem is a :class:`~skipkit.CheckpointError` naming the file.

Run folders (manifest, lock, the never-lose-a-result rules) are in :mod:`skipkit._runs`;
weight files (safetensors, or torch files with ``weights_only=True``) in
:mod:`skipkit._weights`. This module imports no torch, so :mod:`skipkit._runs` needs none.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from skipkit.errors import CheckpointError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "read_json",
    "read_regular_bytes",
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
