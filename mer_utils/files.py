"""Writing files so that an interrupted write never leaves a file that reads as valid, and
reading back the records a LOSO fold writes."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from mer_utils.errors import MerError

FOLD_FILE = "fold.json"  # a LOSO fold's record (runs.run_fold): settings, epoch losses, seconds, fingerprint


_FILE_DIGESTS: dict[tuple, str] = {}  # (path, inode, size, mtime, ctime) -> sha256 of the bytes, for this process


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 of a file's content (the preprocessing cache and the runner's fold
    fingerprints key on content, so a replaced frame is seen even with its old size and
    mtime, and a copied one is the same). Read once per process while the file's inode,
    size, mtime and ctime hold: a write or a restored mtime changes the ctime, which no
    program can set. OSError as open() raises it."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _FILE_DIGESTS[key]


def exit_with_parent() -> None:
    """In a worker process (a process pool's initializer): end when the process that started
    it ends, killed or not, instead of lingering as an orphan holding memory (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing). A parent already gone ends the worker at once."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent or parent == 1:  # the parent ended before the call above took effect
        os._exit(1)


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it into place
    (atomic on one file system); the temporary file is removed if anything fails. The file
    gets the usual permissions, 0o666 less the umask, like ``open(path, "w")`` (``mkstemp``
    alone would leave it readable by its owner only)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # named by the file meant, not by a temporary name nobody gave
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        os.chmod(temporary, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as err:  # e.g. no space left: named by the file meant
        Path(temporary).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` of UTF-8 text (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_fold_record(fold_dir: str | os.PathLike) -> dict:
    """A fold's ``fold.json`` record; MerError naming the file when it is not a JSON object
    with a list of numbers as ``epoch_losses`` (a damaged fold, which the runner trains again)."""
    path = Path(fold_dir) / FOLD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MerError(f"fold record {path} is unreadable ({err})") from None
    losses = record.get("epoch_losses", []) if isinstance(record, dict) else None
    if not isinstance(losses, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in losses):
        raise MerError(f"fold record {path} is damaged: expected a JSON object whose epoch_losses is a list of numbers")
    return record


def fold_records(fold_dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """The ``fold.json`` records (:func:`read_fold_record`) of those of ``fold_dirs`` that have one."""
    return [read_fold_record(d) for d in fold_dirs if (Path(d) / FOLD_FILE).is_file()]
