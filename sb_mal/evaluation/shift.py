"""Shift robustness of SSL feature losses: how a loss reacts when the enhanced signal moves in time.

A loss meant to be position-invariant should hardly change when the enhanced signal is delayed
against the clean reference by a few tens of milliseconds, while a frame-aligned loss (``ssl_mse``)
compares frame ``i`` with frame ``i`` and so grows with the shift. This module measures that:

``delay`` mode
    ``k`` zeros are put before the enhanced signal and its end is cut, so it keeps its length
    (any loss applies);
``pad`` mode
    ``k`` zeros are put before it and nothing is cut, so it is ``k`` samples longer. Losses whose
    ``forward`` accepts ``target_length`` (``ssl_softdtw``, :class:`DTWFeatureDistance`) compare the
    two lengths; a frame-aligned loss cannot, so for it the padded signal is cropped to the
    reference length, which makes ``pad`` the same as ``delay``.

Values are normalised (``relative``) by the same loss's value for the *noisy* input against the
clean reference (``normalize="noisy"``, the default when the noisy signal is given: "this shift
costs x times what the noise costs"), or by the value at shift 0 (``"zero"``; meaningless when
the enhanced signal equals the reference, where that value is 0).

:class:`DTWFeatureDistance` ("ssl_dtw"): the hard-DTW alignment of the two SSL feature sequences
and the mean frame distance along it (total cost / path length), a position-insensitive distance
with no smoothing parameter.

Example
-------
>>> from sb_mal.models import SSLFeatureExtractor, build_tiny_wavlm
>>> ext = SSLFeatureExtractor(build_tiny_wavlm())
>>> clean = torch.randn(1, 16000)
>>> rows = shift_curves(default_shift_losses(ext), clean, clean, shifts_ms=[0, 20],
...                     noisy=clean + 0.3 * torch.randn(1, 16000))
>>> sorted({r["loss"] for r in rows}), len(rows)
(['ssl_dtw', 'ssl_mse', 'ssl_mse_pad', 'ssl_softdtw'], 8)
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sb_mal.dsp import relative_to_samples
from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SHIFTS_MS",
    "SHIFT_MODES",
    "DTWFeatureDistance",
    "default_shift_losses",
    "dtw_path_cost",
    "evaluate_shift_robustness",
    "save_shift_plot",
    "shift_curves",
    "shift_signal",
    "write_shift_csv",
]

SHIFT_MODES = ("delay", "pad")
#: 0 to 100 ms in steps of 10 ms (half an SSL frame).
DEFAULT_SHIFTS_MS = tuple(range(0, 101, 10))


def shift_signal(wav: torch.Tensor, shift: int, mode: str = "delay") -> torch.Tensor:
    """``wav`` (``[B, T]``) with ``shift`` zeros in front: cut back to ``T`` (``delay``) or not (``pad``).

    Example
    -------
    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> shift_signal(x, 1, "delay").tolist(), shift_signal(x, 1, "pad").tolist()
    ([[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0, 3.0]])
    """
    if mode not in SHIFT_MODES:
        raise ValueError(f"mode must be one of {SHIFT_MODES}, got {mode!r}")
    if shift < 0:
        raise ValueError(f"shift must be >= 0 samples, got {shift}")
    if wav.dim() != 2:
        raise ValueError(f"expected waveforms [batch, samples], got shape {tuple(wav.shape)}")
    out = torch.cat((wav.new_zeros(wav.shape[0], shift), wav), dim=1)
    return out[:, : wav.shape[1]] if mode == "delay" else out


def _takes_target_length(loss) -> bool:
    target = loss.forward if isinstance(loss, nn.Module) else loss
    try:
        return "target_length" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def dtw_path_cost(cost: np.ndarray) -> tuple[float, int]:
    """Hard DTW of a cost matrix ``[N, M]``: (cost of the best monotone path, its number of cells).

    Steps are (1, 1), (1, 0) and (0, 1); the path runs from cell (0, 0) to (N-1, M-1). Among
    paths of equal cost, the one reached through the diagonal, then the vertical step, is kept.

    Example
    -------
    >>> dtw_path_cost(np.array([[0.0, 5.0], [5.0, 0.0]]))
    (0.0, 2)
    >>> dtw_path_cost(np.array([[1.0, 1.0, 1.0]]))
    (3.0, 3)
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"cost must be a non-empty [N, M] matrix, got shape {cost.shape}")
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1), dtype=np.int64)
    acc[0, 0] = 0.0
    for k in range(2, n + m + 1):  # anti-diagonal i + j = k (1-based cells)
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        options = np.stack((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]))
        choice = np.argmin(options, axis=0)
        acc[i, j] = cost[i - 1, j - 1] + options[choice, np.arange(len(i))]
        prev_i = np.where(choice == 2, i, i - 1)
        prev_j = np.where(choice == 1, j, j - 1)
        steps[i, j] = steps[prev_i, prev_j] + 1
    return float(acc[n, m]), int(steps[n, m])


class DTWFeatureDistance(nn.Module):
    """Mean SSL feature distance along the hard-DTW alignment ("ssl_dtw"), for evaluation.

    Item ``b``'s value is ``dtw_cost / path_cells`` for the frame cost ``|x_i - y_j|^2 / D``
    (``dim_reduction="mean"``, the per-frame scale of ``ssl_mse``) or ``1 - cos`` (``distance=
    "cosine"``). Lengths may differ: ``length`` is relative to the predictions, ``target_length``
    to the targets (default ``length``). No gradient (a NumPy dynamic programme).

    Example
    -------
    >>> from sb_mal.models import SSLFeatureExtractor, build_tiny_wavlm
    >>> dist = DTWFeatureDistance(SSLFeatureExtractor(build_tiny_wavlm()))
    >>> clean = torch.randn(2, 8000)
    >>> dist(clean, clean, reduction="batch").tolist()
    [0.0, 0.0]
    >>> bool(dist(torch.randn(2, 9600), clean) > 0)
    True
    """

    name = "ssl_dtw"

    def __init__(self, extractor, distance: str = "sqeuclidean", dim_reduction: str = "mean"):
        super().__init__()
        from sb_mal.models.frame_features import FrameFeatureExtractor

        if not isinstance(extractor, FrameFeatureExtractor):
            raise TypeError("DTWFeatureDistance: extractor must be a FrameFeatureExtractor, "
                            f"got {type(extractor).__name__}")
        if distance not in ("sqeuclidean", "cosine"):
            raise ValueError(f"distance must be 'sqeuclidean' or 'cosine', got {distance!r}")
        if dim_reduction not in ("mean", "sum"):
            raise ValueError(f"dim_reduction must be 'mean' or 'sum', got {dim_reduction!r}")
        self.extractor, self.distance, self.dim_reduction = extractor, distance, dim_reduction

    def _cost(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        if self.distance == "cosine":
            c = 1 - nn.functional.normalize(x, dim=-1, eps=1e-8) @ nn.functional.normalize(y, dim=-1, eps=1e-8).T
        else:
            c = torch.cdist(x.double(), y.double()).pow(2)
            if self.dim_reduction == "mean":
                c = c / x.shape[-1]
        return c.cpu().numpy()

    @torch.no_grad()
    def forward(self, predictions, targets, length=None, reduction: str = "mean", target_length=None):
        from sb_mal.losses.reconstruction import reduce

        if predictions.dim() != 2 or targets.dim() != 2 or predictions.shape[0] != targets.shape[0]:
            raise ValueError(f"DTWFeatureDistance: expected waveforms [batch, samples] with equal batch sizes, got "
                             f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
        batch, device = targets.shape[0], targets.device
        pred_counts = relative_to_samples(length, predictions.shape[1], batch, device)
        target_counts = relative_to_samples(length if target_length is None else target_length, targets.shape[1],
                                            batch, device)
        est, n = self.extractor.extract(predictions, pred_counts)
        ref, m = self.extractor.extract(targets, target_counts)
        est, ref = (est if est.dim() == 4 else est[None]), (ref if ref.dim() == 4 else ref[None])
        values = []
        for b in range(batch):
            per_layer = []
            for layer_est, layer_ref in zip(est, ref):
                x, y = layer_est[b, : max(int(n[b]), 1)], layer_ref[b, : max(int(m[b]), 1)]
                total, cells = dtw_path_cost(self._cost(x.float(), y.float()))
                per_layer.append(total / cells)
            values.append(sum(per_layer) / len(per_layer))
        per_item = torch.tensor(values, dtype=torch.float32, device=device)
        return reduce(per_item, reduction)


def default_shift_losses(extractor, seed: int = 0) -> dict[str, Callable]:
    """The three SSL losses and :class:`DTWFeatureDistance`, all on one (frozen) extractor.

    Example
    -------
    >>> from sb_mal.models import SSLFeatureExtractor, build_tiny_wavlm
    >>> sorted(default_shift_losses(SSLFeatureExtractor(build_tiny_wavlm(num_layers=1))))
    ['ssl_dtw', 'ssl_mse', 'ssl_mse_pad', 'ssl_softdtw']
    """
    from sb_mal.losses.ssl import SSLMSELoss, SSLMSEPadLoss, SSLSoftDTWLoss

    return {"ssl_mse": SSLMSELoss(extractor), "ssl_mse_pad": SSLMSEPadLoss(extractor, seed=seed),
            "ssl_softdtw": SSLSoftDTWLoss(extractor), "ssl_dtw": DTWFeatureDistance(extractor)}


def _value(loss, predictions, targets, pred_rel, target_rel) -> float:
    with torch.no_grad():
        if _takes_target_length(loss):
            out = loss(predictions, targets, pred_rel, target_length=target_rel)
        else:
            if predictions.shape[1] != targets.shape[1]:
                predictions = predictions[:, : targets.shape[1]]
            out = loss(predictions, targets, target_rel)
    return float(out)


def shift_curves(losses: Mapping[str, Callable], enhanced: torch.Tensor, clean: torch.Tensor, *,
                 shifts_ms: Sequence[float] = DEFAULT_SHIFTS_MS, mode: str = "delay", sample_rate: int = 16000,
                 noisy: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                 normalize: str | None = "auto") -> list[dict]:
    """Value of each loss for the enhanced signal shifted by each of ``shifts_ms`` (see module docstring).

    Arguments
    ---------
    losses : mapping of name -> loss
        Losses with SpeechBrain's signature (``target_length`` is used where accepted).
    enhanced, clean : torch.Tensor
        ``[B, T]`` (or ``[T]``) waveforms; each loss reduces over the batch with its ``"mean"``.
    shifts_ms : sequence of float
        Shifts in milliseconds (rounded to samples).
    mode : str
        ``"delay"`` or ``"pad"``.
    noisy : torch.Tensor, optional
        The noisy input (same shape as ``clean``), for ``normalize="noisy"``.
    lengths : torch.Tensor, optional
        Relative lengths of the batch (default: all full).
    normalize : str or None
        ``"noisy"``, ``"zero"``, None, or ``"auto"`` (``"noisy"`` if ``noisy`` is given, else ``"zero"``).

    Returns
    -------
    list of dict
        One row per (loss, shift): ``loss``, ``mode``, ``shift_ms``, ``shift_samples``, ``value``,
        ``relative`` (``value / reference``; NaN without a usable reference), ``reference``.
    """
    enhanced, clean = (t[None] if t.dim() == 1 else t for t in (enhanced, clean))
    if enhanced.shape != clean.shape:
        raise ValueError(f"enhanced {tuple(enhanced.shape)} and clean {tuple(clean.shape)} must have the same shape")
    if normalize == "auto":
        normalize = "noisy" if noisy is not None else "zero"
    if normalize not in ("noisy", "zero", None):
        raise ValueError(f"normalize must be 'noisy', 'zero', None or 'auto', got {normalize!r}")
    if normalize == "noisy":
        if noisy is None:
            raise ValueError("normalize='noisy' needs the noisy signal (noisy=...)")
        noisy = noisy[None] if noisy.dim() == 1 else noisy
        if noisy.shape != clean.shape:
            raise ValueError(f"noisy {tuple(noisy.shape)} must have the shape of clean {tuple(clean.shape)}")
    total = clean.shape[1]
    rel = torch.ones(clean.shape[0]) if lengths is None else lengths.float().cpu()
    rows = []
    for name, loss in losses.items():
        reference = None
        if normalize == "noisy":
            reference = _value(loss, noisy, clean, rel, rel)
        elif normalize == "zero":
            reference = _value(loss, enhanced, clean, rel, rel)
        for shift_ms in shifts_ms:
            k = int(round(float(shift_ms) * sample_rate / 1000))
            shifted = shift_signal(enhanced, k, mode)
            shifted_rel = rel if mode == "delay" else (rel * total + k) / (total + k)
            value = _value(loss, shifted, clean, shifted_rel, rel)
            relative = value / reference if reference is not None and reference > 0 else math.nan
            rows.append({"loss": name, "mode": mode, "shift_ms": float(shift_ms), "shift_samples": k,
                         "value": value, "relative": relative, "reference": reference})
    return rows


def evaluate_shift_robustness(pairs: Sequence, losses: Mapping[str, Callable] | None = None, *, extractor=None,
                              shifts_ms: Sequence[float] = DEFAULT_SHIFTS_MS, modes: Sequence[str] = SHIFT_MODES,
                              sample_rate: int = 16000, normalize: str | None = "auto") -> list[dict]:
    """Mean shift curves over utterances: ``pairs`` of ``(enhanced, clean)`` or ``(enhanced, clean, noisy)``.

    Each utterance (1-D array or tensor) is evaluated alone (no padding); ``losses`` defaults to
    :func:`default_shift_losses` of ``extractor``. Returns one row per (mode, loss, shift) with
    the means of ``value`` and ``relative`` over utterances and their count ``n``.

    Example
    -------
    >>> l1 = lambda pred, ref, length=None: (pred - ref).abs().mean()  # any loss with the signature
    >>> clean = np.sin(np.arange(1600) / 10.0)
    >>> rows = evaluate_shift_robustness([(clean, clean, clean + 0.5)], {"l1": l1}, shifts_ms=[0, 5], modes=["delay"])
    >>> [(r["shift_ms"], round(r["relative"], 2)) for r in rows]
    [(0.0, 0.0), (5.0, 1.89)]
    """
    if losses is None:
        if extractor is None:
            raise ValueError("give the losses or an SSL extractor (extractor=...)")
        losses = default_shift_losses(extractor)
    if not pairs:
        raise ValueError("pairs is empty")
    sums: dict[tuple, dict] = {}
    for item in pairs:
        if len(item) not in (2, 3):
            raise ValueError(f"each pair must be (enhanced, clean) or (enhanced, clean, noisy), got {len(item)} items")
        enhanced, clean, noisy = (*(torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in item[:2]),
                                  torch.as_tensor(np.asarray(item[2]), dtype=torch.float32) if len(item) == 3 else None)
        n = min(len(enhanced), len(clean), len(noisy) if noisy is not None else len(clean))
        for mode in modes:
            rows = shift_curves(losses, enhanced[:n], clean[:n], shifts_ms=shifts_ms, mode=mode,
                                sample_rate=sample_rate, noisy=None if noisy is None else noisy[:n],
                                normalize=normalize)
            for row in rows:
                key = (row["mode"], row["loss"], row["shift_ms"])
                acc = sums.setdefault(key, {"value": 0.0, "relative": 0.0, "n": 0,
                                            "shift_samples": row["shift_samples"]})
                acc["value"] += row["value"]
                acc["relative"] += row["relative"]
                acc["n"] += 1
    return [{"mode": mode, "loss": loss, "shift_ms": shift, "shift_samples": acc["shift_samples"],
             "value": acc["value"] / acc["n"], "relative": acc["relative"] / acc["n"], "n": acc["n"]}
            for (mode, loss, shift), acc in sums.items()]


def write_shift_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """Write shift-curve rows as CSV (atomically).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "shift.csv")
    >>> write_shift_csv(path, [{"mode": "delay", "loss": "ssl_mse", "shift_ms": 20.0, "relative": 1.4}])
    >>> open(path).read().splitlines()
    ['mode,loss,shift_ms,relative', 'delay,ssl_mse,20.0,1.4']
    """
    if not rows:
        raise ValueError("no rows to write")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def save_shift_plot(path: str | os.PathLike, rows: Sequence[Mapping], value_key: str = "relative",
                    title: str | None = None) -> None:
    """Plot shift curves (PNG, written atomically): one panel per mode, one line per loss.

    Example
    -------
    >>> import tempfile
    >>> rows = [{"mode": "delay", "loss": name, "shift_ms": s, "relative": v * s / 100}
    ...         for name, v in (("ssl_mse", 1.3), ("ssl_softdtw", 0.1)) for s in (0, 50, 100)]
    >>> path = os.path.join(tempfile.mkdtemp(), "shift.png")
    >>> save_shift_plot(path, rows)
    >>> open(path, "rb").read(4) == b"\\x89PNG"
    True
    """
    from sb_mal.evaluation.plots import _pyplot, _save

    if not rows:
        raise ValueError("no rows to plot")
    plt = _pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.2), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        for name in dict.fromkeys(r["loss"] for r in rows if r["mode"] == mode):
            pts = sorted((r["shift_ms"], r[value_key]) for r in rows if r["mode"] == mode and r["loss"] == name)
            ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", markersize=3, label=name)
        ax.set_title(f"{mode}: enhanced shifted against clean", fontsize=9)
        ax.set_xlabel("shift (ms)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("value / reference value" if value_key == "relative" else value_key, fontsize=8)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
