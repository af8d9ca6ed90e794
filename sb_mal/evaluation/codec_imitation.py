"""How well a codec-approximation network imitates its codec (MP3), against doing nothing.

The reference point is the **identity map** ``C(S) = S``: a network that returns its input
unchanged already scores ``L1(S, S_coded)``, the size of the codec's change in the network's own
domain. A useful loss network must do better than that on held-out audio; the ratio
``net L1 / identity L1`` (below 1 = better than doing nothing) is the headline number.

Domains (those of :meth:`~sb_mal.models.codec_net.SpectralCodecNet.fit_loss`, the training
objective): for :class:`~sb_mal.models.codec_net.SpectralCodecNet` the normalised, compressed
magnitudes ``(|STFT| / scale) ** compress`` (scale from the *input*, the coded target clamped to
[0, 1]); for :class:`~sb_mal.models.codec_net.TimeCodecNet` the waveform (target clamped to
[-1, 1]).

The log-spectral distance (LSD, dB) compares *waveforms* whatever the network: the network's
imitation (:meth:`~sb_mal.models.codec_net.SpectralCodecNet.imitate`, input phase, for the
spectral net; its output for the time net) or the input, against the MP3-coded signal, on
|STFT| (n_fft 1024, hop 512) in dB relative to a full-scale sine, floored at ``floor_db``
(-80 dB): per frame the RMS over bins of the dB difference, then the mean over frames.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sb_mal.audio import list_audio_files, read_audio
from sb_mal.data.mp3 import mp3_roundtrip
from sb_mal.dsp import StftConfig, stft
from sb_mal.models.codec_imitation import _check_net, _imitation, imitate, imitation_l1

logger = logging.getLogger(__name__)

__all__ = ["imitate", "imitation_l1", "imitation_report", "log_spectral_distance", "save_imitation_figure"]


@contextlib.contextmanager
def _evaluating(net: torch.nn.Module):
    """``net`` in eval mode for the block (its mode restored after); yields the device of its weights."""
    param = next(net.parameters(), None)
    was_training = net.training
    net.eval()
    try:
        yield param.device if param is not None else torch.device("cpu")
    finally:
        net.train(was_training)


def log_spectral_distance(estimate, reference, n_fft: int = 1024, hop: int = 512, floor_db: float = -80.0) -> float:
    """Log-spectral distance (dB) between two waveforms ``[samples]`` (see the module docstring).

    Example
    -------
    >>> x = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    >>> log_spectral_distance(x, x)
    0.0
    >>> round(log_spectral_distance(0.5 * x, x), 2)  # -6.02 dB everywhere (nothing near the floor)
    6.02
    """
    est = torch.as_tensor(np.asarray(estimate, dtype=np.float32)).reshape(1, -1)
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float32)).reshape(1, -1)
    if est.shape != ref.shape or est.numel() == 0:
        raise ValueError(f"log_spectral_distance needs two non-empty waveforms of one length, got {est.shape[1]} "
                         f"and {ref.shape[1]} samples")
    cfg = StftConfig(n_fft, hop)
    full_scale = float(cfg.window("cpu").sum()) / 2  # |STFT| peak of a full-scale sine
    floor = 10.0 ** (floor_db / 20.0)

    def db(wav):
        return 20 * torch.log10((stft(wav.double(), cfg).abs() / full_scale).clamp(min=floor))

    per_frame = (db(est) - db(ref)).pow(2).mean(dim=1).sqrt()
    return float(per_frame.mean())


def _entries(source, sample_rate: int, bitrate_kbps: int, quality: int):
    """Yield ``(id, original, coded)`` from a dataset or from files/folders (coded whole)."""
    if isinstance(source, torch.utils.data.Dataset):
        for i in range(len(source)):
            it = source[i]
            yield (str(it.get("id", f"item{i:05d}")), np.asarray(it["noisy_sig"], dtype=np.float32),
                   np.asarray(it["clean_sig"], dtype=np.float32))
        return
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = []
    for p in paths:
        files.extend(list_audio_files(p) if Path(p).is_dir() else [os.fspath(p)])
    for path in files:
        wav, _ = read_audio(path, sample_rate, as_numpy=True)
        p = Path(path)
        yield f"{p.parent.name}/{p.stem}", wav, mp3_roundtrip(wav, sample_rate, bitrate_kbps, quality)


def imitation_report(codec_net: torch.nn.Module, source, *, sample_rate: int = 16000, bitrate_kbps: int = 16,
                     quality: int = 2, max_seconds: float | None = None, lsd: bool = True,
                     progress: bool = False) -> dict:
    """L1 (and LSD) of the network's imitation and of the identity map against the codec.

    Arguments
    ---------
    codec_net : SpectralCodecNet or TimeCodecNet
        Evaluated in eval mode, without gradient, on its own device (its mode is restored).
    source : path, list of paths, or Dataset
        Audio files and/or folders (searched recursively; each file is resampled to
        ``sample_rate`` and MP3-coded whole, as in training), or a dataset with items
        ``{"id", "noisy_sig": original, "clean_sig": coded}`` (e.g.
        :class:`~sb_mal.data.mp3.Mp3PairDataset`).
    sample_rate, bitrate_kbps, quality : int
        The codec settings (files only; they must be those the network was trained on).
    max_seconds : float, optional
        Keep only the first seconds of each item (cut after coding).
    lsd : bool
        Also compute the log-spectral distances.

    Returns
    -------
    dict
        ``{"network", "n_items", "seconds", "mean": {...}, "items": [{...}]}``; every item and
        the mean hold ``net_l1``, ``identity_l1``, ``ratio`` (net / identity; for the mean the
        ratio of the means) and, with ``lsd``, ``net_lsd_db``, ``identity_lsd_db``.

    Example
    -------
    >>> from sb_mal.models.codec_net import SpectralCodecNet
    >>> from sb_mal.data.mp3 import mp3_roundtrip
    >>> x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    >>> ds = [{"id": "noise", "noisy_sig": x, "clean_sig": mp3_roundtrip(x)}]
    >>> class Items(torch.utils.data.Dataset):
    ...     __len__ = lambda self: len(ds)
    ...     __getitem__ = lambda self, i: ds[i]
    >>> rep = imitation_report(SpectralCodecNet(filters=4, levels=2), Items())
    >>> rep["n_items"], sorted(rep["mean"])
    (1, ['identity_l1', 'identity_lsd_db', 'net_l1', 'net_lsd_db', 'ratio'])
    """
    _check_net(codec_net)
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    items = []
    with _evaluating(codec_net) as device:
        from tqdm import tqdm

        for uid, original, coded in tqdm(_entries(source, sample_rate, bitrate_kbps, quality), desc="imitation",
                                         disable=not progress):
            if original.shape != coded.shape or original.ndim != 1:
                raise ValueError(f"{uid}: original and coded must be waveforms of one length, got "
                                 f"{original.shape} and {coded.shape}")
            if max_seconds is not None:
                keep = int(round(max_seconds * sample_rate))
                original, coded = original[:keep], coded[:keep]
            x = torch.from_numpy(np.ascontiguousarray(original))[None].to(device)
            y = torch.from_numpy(np.ascontiguousarray(coded))[None].to(device)
            with torch.no_grad():
                net_l1, identity, waveform = _imitation(codec_net, x, y)
                net_l1, identity = float(net_l1[0]), float(identity[0])
                row = {"id": uid, "seconds": len(original) / sample_rate, "net_l1": net_l1, "identity_l1": identity,
                       "ratio": net_l1 / identity if identity > 0 else math.nan}
                if lsd:
                    out = waveform()[0].float().cpu().numpy()
                    row["net_lsd_db"] = log_spectral_distance(out, coded)
                    row["identity_lsd_db"] = log_spectral_distance(original, coded)
            items.append(row)
    if not items:
        raise ValueError(f"imitation_report: no items in {source!r}")
    keys = ["net_l1", "identity_l1"] + (["net_lsd_db", "identity_lsd_db"] if lsd else [])
    mean = {k: float(np.mean([r[k] for r in items])) for k in keys}
    mean["ratio"] = mean["net_l1"] / mean["identity_l1"] if mean["identity_l1"] > 0 else math.nan
    logger.info("imitation on %d items: net L1 %.4f, identity L1 %.4f (ratio %.3f)", len(items), mean["net_l1"],
                mean["identity_l1"], mean["ratio"])
    return {"network": type(codec_net).__name__, "n_items": len(items),
            "seconds": float(sum(r["seconds"] for r in items)), "mean": mean, "items": items}


def save_imitation_figure(path: str | os.PathLike, wav, codec_net: torch.nn.Module, *, sample_rate: int = 16000,
                          bitrate_kbps: int = 16, quality: int = 2, row_labels: Sequence[str] | None = None,
                          title: str | None = None, colors: int | None = 64) -> None:
    """Spectrogram grid: input | MP3-coded | network imitation, one row per waveform.

    Spectrograms of noisy audio compress poorly (about 260 kB per row of three panels as RGBA);
    the PNG is therefore re-encoded with a palette of ``colors`` colours (64: about 70 kB per row,
    1.6 dB per colour step on the 100 dB scale; None keeps the full-colour image).

    Arguments
    ---------
    path : path
        PNG to write (atomically).
    wav : array or list of arrays
        Mono waveform(s) at ``sample_rate``; each is MP3-coded here (keep them short: a few seconds).
    codec_net : SpectralCodecNet or TimeCodecNet
        Run in eval mode without gradient (its mode is restored).
    row_labels : list of str, optional
        One label per waveform (default ``#1``, ``#2``...).

    Example
    -------
    >>> import tempfile, os
    >>> from sb_mal.models.codec_net import SpectralCodecNet
    >>> png = os.path.join(tempfile.mkdtemp(), "imitation.png")
    >>> x = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    >>> save_imitation_figure(png, x, SpectralCodecNet(filters=4, levels=2))
    >>> open(png, "rb").read(4) == b"\\x89PNG"
    True
    """
    from sb_mal.evaluation.plots import save_spectrogram_grid

    _check_net(codec_net)
    waves = [wav] if isinstance(wav, (np.ndarray, torch.Tensor)) and np.ndim(wav) == 1 else list(wav)
    if not waves:
        raise ValueError("save_imitation_figure: no waveform given")
    labels = list(row_labels) if row_labels is not None else [f"#{i + 1}" for i in range(len(waves))]
    if len(labels) != len(waves):
        raise ValueError(f"{len(labels)} row_labels for {len(waves)} waveforms")
    rows = []
    with _evaluating(codec_net) as device:
        for w in waves:
            x = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float32).reshape(-1)
            with torch.no_grad():
                out = imitate(codec_net, torch.from_numpy(x)[None].to(device))[0].float().cpu().numpy()
            rows.append([x, mp3_roundtrip(x, sample_rate, bitrate_kbps, quality), out])
    save_spectrogram_grid(path, rows, labels, ["input", f"MP3 {bitrate_kbps} kbps", type(codec_net).__name__],
                          sample_rate=sample_rate, title=title)
    if colors is not None:
        _palette_png(path, int(colors))


def _palette_png(path: str | os.PathLike, colors: int) -> None:
    """Re-encode a PNG with an adaptive palette of ``colors`` colours (atomically)."""
    from PIL import Image

    from sb_mal.fileio import temporary_path

    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be in 2..256 or None, got {colors}")
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    tmp = temporary_path(path, ".png")
    try:
        small.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, os.fspath(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
