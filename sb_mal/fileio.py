"""Atomic file output: write to a temporary file in the target folder, then rename.

A reader never sees a half-written file, and a crash leaves the previous version intact.
Temporary names start with ``.tmp-`` (hidden, so folder scans skip them).
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write_text", "public_mode", "temporary_path"]


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


def temporary_path(path: str | os.PathLike, suffix: str = "") -> str:
    """A fresh temporary file next to ``path`` (same folder, so the final rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
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
