"""Datasets the recipes train and evaluate on: manifests of pairs as SpeechBrain DynamicItemDatasets.

Items have ``id``, ``noisy_sig`` and ``clean_sig`` (1-D float tensors at ``sample_rate``), the same
keys :class:`sb_mal.data.mixing.OnTheFlyMixer` produces, so a Brain sees one format whatever the
corpus.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

from sb_mal.audio import AudioError, read_audio
from sb_mal.data.manifest import load_manifest

__all__ = ["manifest_dataset"]


def manifest_dataset(
    json_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    sample_rate: int = 16000,
    segment_seconds: float | None = None,
    sort: bool = True,
    seed: int = 0,
    limit: int | None = None,
    input_key: str = "noisy_wav",
    target_key: str = "clean_wav",
) -> DynamicItemDataset:
    """A dataset of noisy/clean pairs from a SpeechBrain JSON manifest.

    Arguments
    ---------
    json_path : path
        The manifest (see :mod:`sb_mal.data.manifest`).
    data_root : path, optional
        Value of ``{data_root}`` (default: the manifest's folder).
    sample_rate : int
        Audio is resampled to this rate.
    segment_seconds : float, optional
        Random crop (same place in noisy and clean) of this length for training; shorter
        utterances are kept whole.
    sort : bool
        Sort by length (less padding; for validation/test).
    seed : int
        Seed of the random crops (crop of item ``i`` at its ``k``-th read depends on both).
    limit : int, optional
        Keep only the first ``limit`` utterances (after sorting).
    input_key, target_key : str
        Manifest fields of the input and target files (``mix_wav``/``source_wav`` for separation).

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> from sb_mal.audio import write_audio
    >>> from sb_mal.data.manifest import prepare_pairs
    >>> d = tempfile.mkdtemp()
    >>> for sub in ("noisy", "clean"):
    ...     write_audio(os.path.join(d, sub, "u.wav"), np.zeros(8000), 16000)
    >>> _ = prepare_pairs(os.path.join(d, "noisy"), os.path.join(d, "clean"), os.path.join(d, "m.json"))
    >>> ds = manifest_dataset(os.path.join(d, "m.json"))
    >>> ds[0]["noisy_sig"].shape
    torch.Size([8000])
    """
    json_path = os.fspath(json_path)
    root = os.fspath(data_root) if data_root is not None else os.path.dirname(os.path.abspath(json_path))
    entries = load_manifest(json_path, root)
    for uid, e in entries.items():
        for key in (input_key, target_key):
            if key not in e:
                raise ValueError(f"{json_path}: entry {uid!r} has no {key!r} field")
    ds = DynamicItemDataset(entries)
    segment = None if segment_seconds is None else int(round(segment_seconds * sample_rate))
    counter = {"reads": 0}

    @takes(input_key, target_key)
    @provides("noisy_sig", "clean_sig")
    def audio_pipeline(noisy_path, clean_path):
        noisy, _ = read_audio(noisy_path, sample_rate, as_numpy=True)
        clean, _ = read_audio(clean_path, sample_rate, as_numpy=True)
        if abs(len(noisy) - len(clean)) > sample_rate // 100:
            raise AudioError(f"{noisy_path}: {len(noisy)} samples but its reference {clean_path} has {len(clean)}")
        n = min(len(noisy), len(clean))
        noisy, clean = noisy[:n], clean[:n]
        if segment is not None and n > segment:
            counter["reads"] += 1
            rng = np.random.default_rng([seed, zlib.crc32(noisy_path.encode()), counter["reads"]])
            start = int(rng.integers(0, n - segment + 1))
            noisy, clean = noisy[start : start + segment], clean[start : start + segment]
        yield torch.from_numpy(np.ascontiguousarray(noisy))
        yield torch.from_numpy(np.ascontiguousarray(clean))

    ds.add_dynamic_item(audio_pipeline)
    ds.set_output_keys(["id", "noisy_sig", "clean_sig"])
    if sort:
        ds = ds.filtered_sorted(sort_key="length")
    if limit is not None:
        ds = ds.filtered_sorted(select_n=int(limit)) if not sort else ds.filtered_sorted(sort_key="length", select_n=int(limit))
    return ds
