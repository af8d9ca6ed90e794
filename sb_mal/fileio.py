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
import socket
import tempfile

logger = logging.getLogger(__name__)
_CLEANED: set[str] = set()

__all__ = ["atomic_write_text", "public_mode", "remove_stale_temporaries", "temporary_path"]


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
    """Delete the ``.tmp-<host>-<pid>-*`` files in ``folder`` whose writer (on this host) is gone.

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
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
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
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror}") from err
    os.close(fd)
    os.chmod(tmp, public_mode())
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
