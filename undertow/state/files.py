"""The state folder's files: names derived from sync names, and private modes.

The state folder holds customer data (snapshots, change sets, full payloads), so it is
private to its user: the folder and every folder under it are 0700 and the files 0600,
even when they already existed with looser modes.

A sync's files are named by :func:`sync_stem`, which is injective: two different sync
names never share a file (``users crm`` and ``users_crm``, ``Users`` and ``users`` on a
case-insensitive disk, two names of other scripts), and the name is bounded in length.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from undertow.errors import StateError

_PLAIN = re.compile(r"^[a-z0-9_]{1,64}$")
_LEGACY = re.compile(r"[^A-Za-z0-9_.-]")


def sync_stem(sync: str) -> str:
    """The file name stem of a sync's files: the name itself when it is plain lowercase
    ASCII (``[a-z0-9_]``, at most 64), else a readable slug, ``-`` and a digest of the exact
    name. A plain stem has no ``-``, so the two forms never meet."""
    if _PLAIN.match(sync):
        return sync
    slug = re.sub(r"[^a-z0-9_]+", "_", sync.lower()).strip("_")[:40]
    digest = hashlib.sha256(sync.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{slug}-{digest}"


def sync_file(folder: Path, sync: str, suffix: str) -> Path:
    """``folder/<stem><suffix>``; a file of the old naming (characters replaced by ``_``)
    is renamed to it when the sync's name had nothing replaced, so it was its own."""
    path = folder / (sync_stem(sync) + suffix)
    legacy = folder / (_LEGACY.sub("_", sync) + suffix)
    if legacy != path and legacy.name == sync + suffix and not path.exists():
        for extra in ("", ".wal"):  # DuckDB's write-ahead log travels with its file
            old, new = Path(f"{legacy}{extra}"), Path(f"{path}{extra}")
            with contextlib.suppress(OSError):
                if old.exists():
                    old.rename(new)
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700, and tighten it when it already existed."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise state_os_error(exc, path, "create the state folder") from exc
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


def open_private_append(path: Path) -> BinaryIO:
    """Open ``path`` to append, created 0600 (and made 0600 if it was looser): for files
    that hold full payloads (the ``local://`` inbox, the file destination)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def write_private(path: Path, text: str) -> None:
    """Write a small file atomically, 0600 (a temporary file renamed over it)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise state_os_error(exc, path, "write") from exc


def prepare_sqlite_file(database: Path) -> None:
    """The SQLite state file and its folder exist, private, and writable, or a StateError
    says what cannot be written and where (SQLite itself says only "unable to open")."""
    private_dir(database.parent)
    try:
        fd = os.open(database, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise state_os_error(exc, database, "open the state database") from exc
    private_file(database)
    if not os.access(database.parent, os.W_OK):
        # SQLite writes its journal (-wal, -shm) beside the file
        denied = OSError(errno.EACCES, "permission denied")
        raise state_os_error(denied, database.parent, "write the state folder")


_DISK_CAUSES = {
    "no space left on device": "the disk is full",
    "disk quota exceeded": "the disk quota is exceeded",
    "read-only file system": "the file system is read-only",
    "database or disk is full": "the disk is full",
}


def disk_cause(message: str) -> str | None:
    """The disk problem a driver's message reports (full, over quota, read-only), if any."""
    lowered = message.lower()
    return next((cause for text, cause in _DISK_CAUSES.items() if text in lowered), None)


def unwritable(state_dir: Path, state_url: str) -> list[StateError]:
    """What of the state folder (and a SQLite state file's folder) this user cannot write,
    found by creating and removing a file there (or in the closest existing parent), so a
    read-only project folder is reported by ``validate``, not by a crash in ``run``."""
    folders = [Path(state_dir)]
    if state_url.startswith("sqlite:///"):
        file = state_url.removeprefix("sqlite:///").split("?", 1)[0]
        if file and file != ":memory:":
            folders.append(Path(file).parent)
    problems = []
    for folder in dict.fromkeys(folders):
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            fd, name = tempfile.mkstemp(dir=probe, prefix=".undertow-probe-")
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            doing = "write the state folder" if probe == folder else "create the state folder"
            problems.append(state_os_error(exc, folder, doing))
    return problems


def state_os_error(exc: OSError, path: Path, doing: str) -> StateError:
    """An OSError under the state folder as a StateError that names the real cause."""
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENAMETOOLONG: "the file name is too long",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    hint = {
        errno.ENOSPC: "free some space on that disk (or move `state_dir:` to another disk), "
        "then run again; nothing was lost",
        errno.EDQUOT: "free some space or raise the quota, then run again; nothing was lost",
        errno.EROFS: "set `state_dir:` (and `state:`) to a writable folder",
    }.get(
        exc.errno or 0,
        "give this user write permission there, or set `state_dir:` in undertow.yml to a "
        "writable folder",
    )
    return StateError(f"cannot {doing} {path}: {why}", hint=hint)
