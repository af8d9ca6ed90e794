"""Container for metric results: per-utterance rows, NaN-free means, tables, CSV/JSON output."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field

from sb_mal.fileio import atomic_write_text

__all__ = ["EvalResult", "PartialRows", "format_table"]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table with aligned columns (Markdown-compatible).

    Example
    -------
    >>> print(format_table([{"system": "noisy", "pesq": 1.5}], ["system", "pesq"]))
    | system | pesq  |
    |--------|-------|
    | noisy  | 1.500 |
    """
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


@dataclass
class EvalResult:
    """Scores of a list of utterances.

    Attributes
    ----------
    metrics : list of str
        Metric names, in report order.
    rows : list of dict
        One dict per utterance: ``{"id": ..., <metric>: float or NaN}``.
    means : dict
        Mean of each metric over the utterances where it is finite (NaN if none).
    counts : dict
        Number of utterances each mean is taken over.
    failures : list of (id, message)
        What went wrong, per utterance.
    """

    metrics: list[str]
    rows: list[dict]
    means: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)

    @classmethod
    def from_rows(cls, ids, scores, metrics, failures=()) -> EvalResult:
        """Build from ids and per-utterance score dicts, computing NaN-free means."""
        rows = []
        for uid, s in zip(ids, scores):
            row = {"id": uid}
            row.update({m: float(s.get(m, math.nan)) if s else math.nan for m in metrics})
            rows.append(row)
        means, counts = {}, {}
        for m in metrics:
            vals = [r[m] for r in rows if not math.isnan(r[m])]
            counts[m] = len(vals)
            means[m] = sum(vals) / len(vals) if vals else math.nan
        return cls(list(metrics), rows, means, counts, list(failures))

    def column(self, metric: str) -> list[float]:
        """Per-utterance values of one metric (NaN where it failed)."""
        return [r[metric] for r in self.rows]

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the per-utterance rows as CSV (atomically)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", *self.metrics])
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (_fmt(v) if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write_text(path, buf.getvalue())

    def summary(self) -> dict:
        """JSON-ready dict with means, counts and failures (NaN written as null)."""
        clean = lambda d: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}  # noqa: E731
        return {
            "n_utterances": len(self.rows),
            "means": clean(self.means),
            "counts": self.counts,
            "failures": [{"id": i, "message": m} for i, m in self.failures],
        }

    def to_json(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write :meth:`summary` (and the ``extra`` fields) as JSON (atomically)."""
        atomic_write_text(path, json.dumps({**self.summary(), **(extra or {})}, indent=2) + "\n")


class PartialRows:
    """Per-utterance rows written as they are scored, so a stopped run keeps what it scored.

    Rows go to ``<path>.partial`` (CSV, flushed after each row, in the order utterances finish);
    :meth:`finish` writes the complete ``path`` atomically, in utterance order, and removes the
    partial file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "noisy_scores.csv")
    >>> rows = PartialRows(path, ["pesq"])
    >>> rows.add("u1", {"pesq": 2.5})
    >>> open(path + ".partial").read().splitlines()
    ['id,pesq', 'u1,2.500']
    >>> rows.finish(EvalResult.from_rows(["u1"], [{"pesq": 2.5}], ["pesq"]))
    >>> os.path.exists(path + ".partial"), open(path).read().splitlines()[1]
    (False, 'u1,2.500')
    """

    def __init__(self, path: str | os.PathLike, metrics: list[str]):
        self.path, self.metrics = os.fspath(path), list(metrics)
        self._file = open(self.path + ".partial", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(self._file, fieldnames=["id", *self.metrics])
        self._writer.writeheader()
        self._file.flush()

    def add(self, uid: str, scores: dict) -> None:
        self._writer.writerow({"id": uid, **{m: _fmt(float(scores.get(m, math.nan))) for m in self.metrics}})
        self._file.flush()

    def finish(self, result: EvalResult) -> None:
        self._file.close()
        result.to_csv(self.path)
        os.unlink(self.path + ".partial")
