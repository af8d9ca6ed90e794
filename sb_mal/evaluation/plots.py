"""Figures: spectrogram grids (matplotlib, Agg backend, written atomically as PNG)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["save_metric_curves", "save_spectrogram_grid", "spectrogram_db"]


def spectrogram_db(wav: np.ndarray, sample_rate: int = 16000, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Magnitude spectrogram in dB ``[freq, frames]`` (Hann window, floor at -100 dB).

    Example
    -------
    >>> spectrogram_db(np.zeros(1600)).shape
    (257, 13)
    """
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    x = np.pad(x, n_fft // 2)
    n = 1 + max(0, (len(x) - n_fft) // hop)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    window = np.hanning(n_fft + 1)[:-1]
    mag = np.abs(np.fft.rfft(x[idx] * window, axis=1)).T
    return 20 * np.log10(np.maximum(mag, 1e-5))


def save_spectrogram_grid(
    path: str | os.PathLike,
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    sample_rate: int = 16000,
    title: str | None = None,
    vmin: float = -80.0,
    vmax: float = 20.0,
    dpi: int = 110,
) -> None:
    """Save a grid of spectrograms: ``rows[i][j]`` is drawn at row i, column j.

    Arguments
    ---------
    path : path
        PNG to write (atomically).
    rows : list of lists of arrays
        Waveforms, one list per row.
    row_labels, col_labels : list of str
        Axis labels of the grid.
    sample_rate : int
        Rate of the waveforms (sets the axes in seconds and kHz).
    dpi : int
        Resolution of the PNG (spectrograms of noise compress badly: a lower one keeps a large grid small).
    """
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(f"need {n_rows} row labels and {n_cols} column labels, got {len(row_labels)} and {len(col_labels)}")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 2.4 * n_rows), squeeze=False, sharey=True)
    image = None
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(row) or row[j] is None:
                ax.axis("off")
                continue
            spec = spectrogram_db(row[j], sample_rate)
            duration = len(row[j]) / sample_rate
            image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                              extent=(0, duration, 0, sample_rate / 2000))
            if i == 0:
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{row_labels[i]}\nkHz", fontsize=8)
            if i == n_rows - 1:
                ax.set_xlabel("s", fontsize=8)
            ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="dB")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    from sb_mal.fileio import temporary_path

    plt = _pyplot()
    tmp = temporary_path(path, ".png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, os.fspath(path))
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_metric_curves(path: str | os.PathLike, rows: Sequence[Mapping], metrics: Sequence[str],
                       x_key: str = "pass", series_key: str = "model", shared_start: str | None = "input") -> None:
    """Line plots of metrics: one subplot per metric, one line per series.

    ``rows`` are dicts with ``x_key``, ``series_key`` and the metrics. A row whose series is
    ``shared_start`` (e.g. the unprocessed input at pass 0) starts every line.
    """
    plt = _pyplot()
    start = next((r for r in rows if r[series_key] == shared_start), None) if shared_start else None
    series = [m for m in dict.fromkeys(r[series_key] for r in rows) if m != shared_start]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name in series:
            pts = [(r[x_key], r[metric]) for r in rows if r[series_key] == name]
            if start is not None:
                pts = [(start[x_key], start[metric]), *pts]
            ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=str(name))
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
