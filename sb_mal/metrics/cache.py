"""Metric scores of (signal, reference) pairs kept across epochs and runs, keyed by content.

MetricGAN+ and MetricGAN-OKD score every training utterance's *noisy* input against its clean
reference for the discriminator; those scores never change, so a run (and the next run on the same
data) computes them once. A :class:`ScoreCache` is a SQLite file: one row per (content key,
metric, version), where the key hashes the two signals' samples and the rate, and the version
names the implementation (sb_mal and the metric packages), so an upgrade recomputes instead of
reusing. Only finite scores are kept (a failed metric is computed again next time). Writes are
transactions, so a killed run leaves the file consistent; several runs may share one file.

Its default place is ``$SB_MAL_CACHE`` or ``~/.cache/sb_mal`` (``metric_scores.sqlite``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = ["ScoreCache", "default_cache_path", "implementation_version"]

_PACKAGES = ("pesq", "pystoi", "numpy", "scipy")


def default_cache_path() -> Path:
    """``$SB_MAL_CACHE/metric_scores.sqlite``, or the same under ``~/.cache/sb_mal``."""
    root = os.environ.get("SB_MAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sb_mal")
    return Path(root) / "metric_scores.sqlite"


def implementation_version() -> str:
    """sb_mal's version and those of the packages the metrics are computed with."""
    from sb_mal import __version__

    parts = [f"sb_mal {__version__}"]
    for name in _PACKAGES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} -")
    return "; ".join(parts)


class ScoreCache:
    """A persistent store of metric scores by content (module docstring).

    Example
    -------
    >>> import tempfile
    >>> cache = ScoreCache(Path(tempfile.mkdtemp()) / "scores.sqlite")
    >>> x = np.zeros(160, dtype=np.float32)
    >>> key = cache.key(x, x + 1, 16000)
    >>> cache.get(key, ["pesq"]) is None
    True
    >>> cache.put(key, {"pesq": 2.5, "stoi": float("nan")})
    >>> cache.get(key, ["pesq"]), cache.get(key, ["pesq", "stoi"])  # a NaN was not kept
    ({'pesq': 2.5}, None)
    """

    def __init__(self, path: str | os.PathLike, version: str | None = None):
        self.path = Path(path)
        self.version = version if version is not None else implementation_version()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT NOT NULL, metric TEXT NOT NULL, "
                           "version TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, metric, version))")
        except sqlite3.DatabaseError as err:
            raise OSError(f"metric score cache {self.path}: not usable ({err}); delete it or choose another "
                          "place (SB_MAL_CACHE)") from err

    @contextlib.contextmanager
    def _connect(self):
        """One transaction on a connection that is closed afterwards."""
        db = sqlite3.connect(str(self.path), timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    @staticmethod
    def key(signal, reference, rate: int) -> str:
        """A hash of both signals' float32 samples and the rate."""
        digest = hashlib.sha256(f"{int(rate)}|".encode())
        for x in (signal, reference):
            a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
            digest.update(f"{a.shape}|".encode())
            digest.update(a.tobytes())
        return digest.hexdigest()

    def get(self, key: str, metrics: Sequence[str]) -> dict | None:
        """The scores of every metric in ``metrics`` for ``key``, or None if any is missing."""
        wanted = list(metrics)
        with self._connect() as db:
            rows = db.execute(f"SELECT metric, value FROM scores WHERE key = ? AND version = ? AND metric IN "
                              f"({', '.join('?' * len(wanted))})", (key, self.version, *wanted)).fetchall()
        found = dict(rows)
        return {m: found[m] for m in wanted} if len(found) == len(wanted) else None

    def put(self, key: str, scores: dict) -> None:
        """Keep the finite ``scores`` of ``key`` (one transaction)."""
        rows = [(key, m, self.version, float(v)) for m, v in scores.items()
                if v is not None and math.isfinite(float(v))]
        if rows:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
