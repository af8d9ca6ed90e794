"""Atomic file output: write to a temporary file in the target folder, then rename.

A reader never sees a half-written file, and a crash leaves the previous version intact.
Temporary names start with ``.tmp-`` (hidden, so folder scans skip them) and carry the host and
process id of the writer: the first write into a folder removes the temporary files that writers
of this host left behind when they were killed (their process is gone); those of live processes
and other hosts are left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile

logger = logging.getLogger(__name__)
_CLEANED: set[str] = set()

__all__ = ["FolderLock", "FolderLockedError", "WriteError", "atomic_write_text", "public_mode", "remove_stale_temporaries",
           "temporary_folder", "temporary_path"]


class WriteError(OSError):
    """An output could not be written: ``errno`` is the cause, the message names the file and says it
    in words (no ``[Errno N]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


def public_mode(base: int = 0o666) -> int:
    """``base`` under the process umask (``mkstemp`` creates private 0600 files; we publish normally).

    Example
    -------
    >>> public_mode(0o666) & 0o600
    384
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the ``.tmp-<host>-<pid>-*`` files and folders in ``folder`` whose writer (on this host) is gone.

    Returns the removed paths. Called by :func:`temporary_path` once per folder and process.
    """
    folder = os.fspath(folder)
    pattern = re.compile(rf"^\.tmp-{re.escape(_host())}-(\d+)-")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        logger.info("%s: removed %d temporary file(s) left by killed writes", folder, len(removed))
    return removed


def temporary_path(path: str | os.PathLike, suffix: str = "") -> str:
    """A fresh temporary file next to ``path`` (same folder, so the final rename is atomic).

    An error (e.g. a read-only folder) names ``path``, not the temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        if folder not in _CLEANED:
            _CLEANED.add(folder)
            remove_stale_temporaries(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{_host()}-{os.getpid()}-", suffix=suffix, dir=folder)
    except OSError as err:
        raise WriteError(err.errno, f"cannot write {path}: {err.strerror}") from err
    os.close(fd)
    os.chmod(tmp, public_mode())
    return tmp


def temporary_folder(path: str | os.PathLike) -> str:
    """A fresh hidden folder next to ``path``, to be renamed to it once complete (see :func:`temporary_path`;
    folders left by killed writers are removed the same way)."""
    path = os.fspath(path).rstrip(os.sep)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(parent)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{_host()}-{os.getpid()}-{os.path.basename(path)}-", dir=parent)
    except OSError as err:
        raise WriteError(err.errno, f"cannot write {path}: {err.strerror}") from err
    os.chmod(tmp, public_mode(0o777))
    return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written).

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> atomic_write_text(p, "hello")
    >>> open(p).read()
    'hello'
    """
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock (the message names the folder and the holder)."""


class FolderLock:
    """An exclusive lock on a folder while one process writes it (a training run's output folder).

    The lock is ``<folder>/.lock``, holding ``host pid start-time`` of the holder, and an OS lock
    (``fcntl.flock``) on that file while the holder lives: the OS releases it when the process
    dies, however it dies, so a lock left by a killed run is recognised as stale and taken over
    with a warning naming the dead holder. A second process on the same folder gets
    :class:`FolderLockedError` at once, naming the folder and the holder's host and pid. (Where
    ``fcntl`` is missing, a lock whose holder pid is gone from this host counts as stale; one from
    another host is respected.)

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with FolderLock(folder):
    ...     FolderLock(folder).acquire()
    Traceback (most recent call last):
    ...
    sb_mal.fileio.FolderLockedError: ... is in use by another run (host ..., pid ...); ...
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, self.NAME)
        self._fd = None

    def _holder(self) -> tuple[str, int | None, str]:
        try:
            with open(self.path, encoding="utf-8") as fin:
                parts = fin.read().split()
        except OSError:
            return "?", None, ""
        host = parts[0] if parts else "?"
        pid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        return host, pid, " ".join(parts[2:])

    def acquire(self) -> FolderLock:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        host, pid, since = self._holder()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise FolderLockedError(self._busy(host, pid, since)) from None
        elif pid is not None and (host != _host() or _pid_alive(pid)) and pid != os.getpid():
            os.close(fd)
            raise FolderLockedError(self._busy(host, pid, since))
        if pid is not None and (host, pid) != (_host(), os.getpid()):
            logger.warning("%s: taking over a stale lock left by host %s, pid %s%s (that process is gone)",
                           self.folder, host, pid, f", started {since}" if since else "")
        os.ftruncate(fd, 0)
        import time as _time

        os.write(fd, f"{_host()} {os.getpid()} {_time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _busy(self, host, pid, since) -> str:
        return (f"{self.folder} is in use by another run (host {host}, pid {pid}{', started ' + since if since else ''}); "
                "wait for it to finish, or choose another output folder")

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing drops the OS lock
                self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
