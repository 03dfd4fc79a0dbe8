"""Run folders: a command's output folder, claimed so that no result is ever lost.

:func:`open_run` claims an output folder for one command. A manifest (``skipkit-run.json``)
lists every file the run writes, with its SHA-256 once written; a lock file
(``.skipkit-run.lock``, an ``flock`` released by the kernel when the process dies) keeps a
second live run out. A fresh run refuses a folder holding an earlier run or files skipkit did
not write; ``overwrite`` removes only what the manifest lists::

    out/
      skipkit-run.json        {"format", "command", "created", "files": {name: sha256|null}}
      .skipkit-run.lock       while a run is live
      ...                     the command's files (a name ending in "/" is a nested run)

No torch import (the command line's ``--help`` stays fast).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from skipkit._io import atomic_write_bytes, atomic_write_text, read_json, sha256_bytes, sha256_file
from skipkit.errors import CheckpointError

if sys.platform != "win32":
    import fcntl

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RUN_FORMAT",
    "RunFolder",
    "check_out_dir",
    "new_run_dir",
    "open_run",
    "read_manifest",
]

MANIFEST_NAME = "skipkit-run.json"
LOCK_NAME = ".skipkit-run.lock"
RUN_FORMAT = "skipkit-run/1"
_CHOICES = (
    "continue it with --resume (resume=True), replace what skipkit wrote there with "
    "--overwrite (overwrite=True), or choose a new --out"
)


def _is_tmp_of(name: str, owned: Iterable[str]) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_write_bytes` made for an owned name."""
    return (
        name.startswith(".")
        and name.endswith(".tmp")
        and any(name.startswith(f".{Path(o).name}.") for o in owned)
    )


# ------------------------------------------------------------------------------ run folders


def check_out_dir(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be used, without creating anything.

    Raises ``ValueError`` when ``path`` is a file, is not writable, or cannot be created
    (its nearest existing parent is a file or not writable).
    """
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise ValueError(f"{flag} {path} {where}; give a folder")
    if not os.access(probe, os.W_OK | os.X_OK) or _read_only_fs(probe):
        where = "is not writable" if probe == path else f"cannot be created in {probe}"
        raise ValueError(f"{flag} {path} {where} (permission denied); choose another {flag}")
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def new_run_dir(base: str | os.PathLike[str]) -> Path:
    """Create and return a new, unused folder ``base/YYYYmmdd-HHMMSS[-n]``.

    ``mkdir`` without ``exist_ok`` makes the name unique even between runs started in the
    same second.
    """
    base = Path(base)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    check_out_dir(base / stamp)
    for n in range(1, 10_000):
        path = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path
    raise ValueError(f"no unused run folder name left under {base}")


class _Lock:
    """An exclusive ``flock`` on ``path``; the kernel drops it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.created = False

    def acquire(self) -> str | None:
        """``None`` when acquired, else a note about the holder (its pid when known)."""
        if sys.platform == "win32":  # no flock; runs there are not protected against a twin
            return None
        while True:
            self.created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                return f"pid {holder}" if holder else "another process"
            # the holder before us may have unlinked the file after we opened it
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return None
            os.close(fd)

    def release(self, *, unlink: bool = True) -> None:
        if self.fd < 0:
            return
        if unlink:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


class RunFolder:
    """An output folder claimed by one skipkit command (see :func:`open_run`).

    Files are written through :meth:`write_bytes`/:meth:`write_text` (atomic, listed in the
    manifest with their SHA-256) or listed with :meth:`expect` before something else writes
    them and :meth:`record` after. ``files`` maps a name relative to the folder to its
    checksum (``None`` while not yet written).
    """

    def __init__(self, path: Path, command: str, manifest: dict[str, Any], lock: _Lock) -> None:
        self.path = path
        self.command = command
        self.manifest = manifest
        self._lock = lock

    @property
    def files(self) -> dict[str, str | None]:
        files: dict[str, str | None] = self.manifest["files"]
        return files

    def _save(self) -> None:
        atomic_write_text(self.path / MANIFEST_NAME, json.dumps(self.manifest, indent=1) + "\n")

    def expect(self, *names: str) -> None:
        """List ``names`` before writing them, so ``overwrite`` can remove them after a kill."""
        new = [n for n in names if n not in self.files]
        for n in new:
            self.files[n] = None
        if new:
            self._save()

    def write_bytes(self, name: str, data: bytes, *, save: bool = True) -> Path:
        """Write ``self.path / name`` atomically and record its checksum.

        With ``save=False`` the manifest is written later (by :meth:`commit`): one manifest
        write for several files. The name must have been listed with :meth:`expect`.
        """
        if name not in self.files:
            self.expect(name)
        path = self.path / name
        atomic_write_bytes(path, data)
        self.files[name] = sha256_bytes(data)
        if save:
            self._save()
        return path

    def write_text(self, name: str, text: str, *, save: bool = True) -> Path:
        """:meth:`write_bytes` for UTF-8 text."""
        return self.write_bytes(name, text.encode("utf-8"), save=save)

    def record(self, *names: str) -> None:
        """Checksum files another function wrote (listed with :meth:`expect` first)."""
        for n in names:
            if (self.path / n).is_file():
                self.files[n] = sha256_file(self.path / n)
        self._save()

    def remove(self, *names: str, save: bool = True) -> None:
        """Delete owned files and drop them from the manifest."""
        for n in names:
            (self.path / n).unlink(missing_ok=True)
            self.files.pop(n, None)
        if save:
            self._save()

    def commit(self) -> None:
        """Write the manifest (after ``save=False`` writes)."""
        self._save()

    def verify(self, name: str) -> str | None:
        """``None`` when ``name`` matches its recorded checksum, else what is wrong."""
        want = self.files.get(name)
        if want is None:
            return "its checksum was never recorded (the write was interrupted)"
        try:
            got = sha256_file(self.path / name)
        except CheckpointError as exc:
            return str(exc)
        return None if got == want else "its checksum differs from the manifest (damaged)"

    def close(self) -> None:
        """Release the lock (the manifest stays: the folder is a finished run)."""
        self._lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run manifest of folder ``path``, ``None`` when it has none; a broken one raises
    :class:`CheckpointError`."""
    file = Path(path) / MANIFEST_NAME
    if not file.exists() and not file.is_symlink():
        return None
    doc = read_json(file, what="skipkit run manifest")
    if (
        not isinstance(doc, dict)
        or doc.get("format") != RUN_FORMAT
        or not isinstance(doc.get("files"), dict)
    ):
        raise CheckpointError(f"is not a {RUN_FORMAT} manifest", path=file)
    return doc


def _foreign(path: Path, manifest: dict[str, Any] | None) -> list[str]:
    """Entries of ``path`` that skipkit did not write (nested runs are checked inside)."""
    owned = set(manifest["files"]) if manifest else set()
    found: list[str] = []

    def walk(folder: Path, rel: str) -> None:
        here = [o[len(rel) :] for o in owned if o.startswith(rel) and "/" not in o[len(rel) :]]
        if not rel:
            here.append(MANIFEST_NAME)
        for entry in sorted(folder.iterdir()):
            name = rel + entry.name
            if name in (MANIFEST_NAME, LOCK_NAME) or name in owned:
                continue
            if _is_tmp_of(entry.name, here):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if name + "/" in owned:  # a nested run: its own manifest decides
                    sub = read_manifest(entry)
                    found.extend(name + "/" + f for f in _foreign(entry, sub))
                elif any(o.startswith(name + "/") for o in owned):
                    walk(entry, name + "/")
                else:
                    found.append(name + "/")
            else:
                found.append(name)

    walk(path, "")
    return found


def _clean_tmp(path: Path, manifest: dict[str, Any]) -> None:
    """Remove temporary files that killed atomic writes of owned files left behind."""
    folders: dict[Path, list[str]] = {}
    for name in manifest["files"]:
        if name.endswith("/"):
            sub = path / name
            if sub.is_dir():
                with suppress(CheckpointError):
                    inner = read_manifest(sub)
                    if inner is not None:
                        _clean_tmp(sub, inner)
            continue
        folders.setdefault((path / name).parent, []).append(Path(name).name)
    folders.setdefault(path, []).append(MANIFEST_NAME)
    for folder, names in folders.items():
        if folder.is_dir():
            for entry in folder.iterdir():
                if _is_tmp_of(entry.name, names) and entry.is_file():
                    entry.unlink(missing_ok=True)


def _remove_owned(path: Path, manifest: dict[str, Any]) -> None:
    """Delete every file the manifest lists (nested runs first), then emptied folders."""
    _clean_tmp(path, manifest)
    folders: set[Path] = set()
    for name in manifest["files"]:
        target = path / name
        if name.endswith("/"):
            if target.is_dir():
                inner = read_manifest(target)
                if inner is not None:
                    _remove_owned(target, inner)
                    (target / MANIFEST_NAME).unlink(missing_ok=True)
                folders.add(target)
            continue
        if target.is_file() or target.is_symlink():
            target.unlink()
        folders.update(p for p in target.parents if path in p.parents)
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        with suppress(OSError):
            folder.rmdir()  # only when empty: a user's file inside keeps its folder


def open_run(
    path: str | os.PathLike[str],
    command: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    writes: Iterable[str] = (),
) -> RunFolder:
    """Claim ``path`` for one run of ``command``; returns the :class:`RunFolder` (a context
    manager releasing the lock).

    - a new or empty folder: a fresh run;
    - a folder with a manifest of the same command: ``resume=True`` continues it (the caller
      reads its checkpoint), ``overwrite=True`` removes the files the manifest lists (never
      others) and starts fresh; otherwise ``ValueError`` naming the choices;
    - a folder with files skipkit did not write: ``ValueError``, unless ``overwrite=True``,
      which leaves those files alone;
    - a folder in use by a live run: ``ValueError`` naming its pid.

    ``writes`` are the names the command will write; an existing one that skipkit did not
    write (or that is not a regular file) is always refused, so it is never replaced.
    Temporary files of interrupted writes are removed.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: choose one")
    path = check_out_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = _Lock(path / LOCK_NAME)
    holder = lock.acquire()
    if holder is not None:
        raise ValueError(
            f"{path} is in use by a live skipkit run ({holder}); wait for it to finish or "
            "choose a new --out"
        )
    try:
        manifest = _claim(path, command, resume=resume, overwrite=overwrite, writes=writes)
    except BaseException:
        lock.release(unlink=lock.created)
        raise
    run = RunFolder(path, command, manifest, lock)
    if not resume or not manifest["files"]:
        run.commit()  # the marker that this folder is skipkit's, written at the start
    return run


def _claim(
    path: Path, command: str, *, resume: bool, overwrite: bool, writes: Iterable[str]
) -> dict[str, Any]:
    try:
        manifest = read_manifest(path)
    except CheckpointError as exc:
        raise ValueError(f"{exc}; move it away or choose a new --out") from None
    if manifest is not None and manifest.get("command") != command:
        raise ValueError(
            f"{path} holds a 'skipkit {manifest.get('command')}' run, not a '{command}' run; "
            "choose a new --out"
        )
    foreign = _foreign(path, manifest)
    owned = set(manifest["files"]) if manifest else set()
    clash = [
        w
        for w in writes
        if ((path / w).exists() or (path / w).is_symlink())
        and (w not in owned or not (path / w).is_file())
    ]
    if clash:
        raise ValueError(
            f"{path} already has {', '.join(clash[:5])}, which this run would replace and "
            "skipkit did not write (or is not a regular file); move it away or choose a new --out"
        )
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ValueError(
            f"{path} holds files skipkit did not write ({shown}); choose a new or empty --out "
            "(--overwrite would keep them and write beside them)"
        )
    if manifest is not None and manifest["files"] and not (resume or overwrite):
        raise ValueError(f"{path} holds an earlier '{command}' run; {_CHOICES}")
    if manifest is not None and overwrite:
        _remove_owned(path, manifest)
        manifest = None
    if manifest is None:
        manifest = {
            "format": RUN_FORMAT,
            "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {},
        }
    _clean_tmp(path, manifest)
    return manifest
