"""MUSDB18-HQ preparation for vocal (or any stem) separation.

MUSDB18-HQ (Rafii et al., 150 tracks, 44.1 kHz stereo WAV stems) unpacks to::

    <root>/train/<track>/{mixture,vocals,drums,bass,other}.wav   (100 tracks)
    <root>/test/<track>/...                                       (50 tracks)

:func:`prepare_musdb18hq` turns it into chunked, mono, resampled pairs and SpeechBrain manifests
under ``out_dir`` (the corpus itself is only read)::

    <out_dir>/<split>/<track>__<k>_mix.flac, <track>__<k>_<source>.flac
    <out_dir>/{train,valid,test}.json     {"<track>__<k>": {"mix_wav", "source_wav", "length", "track"}}

Chunks whose source is (nearly) silent are left out (``min_source_db``, relative to full scale):
a silent target makes SI-SDR and PESQ meaningless. The validation split is a set of training
tracks (``valid_tracks``, or the last ``num_valid`` in name order). Preparation is skipped when the
manifests exist and were written with the same options.

The dataset is distributed under its own terms from https://sigsep.github.io/datasets/musdb.html
(registration on Zenodo); there is no automatic download.

Example
-------
>>> import tempfile, numpy as np, soundfile as sf
>>> root, out = tempfile.mkdtemp(), tempfile.mkdtemp()
>>> rng = np.random.default_rng(0)
>>> for split, track in (("train", "A - one"), ("train", "B - two"), ("test", "C - three")):
...     os.makedirs(os.path.join(root, split, track))
...     vocals = 0.1 * rng.standard_normal((44100, 2))
...     sf.write(os.path.join(root, split, track, "vocals.wav"), vocals, 44100)
...     sf.write(os.path.join(root, split, track, "mixture.wav"), vocals + 0.1 * rng.standard_normal((44100, 2)), 44100)
>>> counts = prepare_musdb18hq(root, out, chunk_seconds=0.5, num_valid=1, progress=False)
>>> counts
{'train': 2, 'valid': 2, 'test': 2}
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from sb_mal.audio import AudioError, read_audio, write_audio
from sb_mal.data.manifest import to_placeholder, write_manifest
from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["MUSDB_SOURCES", "prepare_musdb18hq"]

MUSDB_SOURCES = ("vocals", "drums", "bass", "other")
_OPTIONS = "musdb_prep.json"


def _tracks(root: str, split: str) -> list[str]:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"MUSDB18-HQ: {folder} not found; expected <root>/train/<track>/mixture.wav and "
                                "<root>/test/<track>/mixture.wav (the unpacked MUSDB18-HQ archive)")
    tracks = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not tracks:
        raise FileNotFoundError(f"MUSDB18-HQ: no track folders in {folder}")
    return tracks


def _slug(track: str) -> str:
    keep = [c if c.isalnum() or c in "-_" else "_" for c in track]
    return "".join(keep).strip("_")


def prepare_musdb18hq(
    musdb_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    source: str = "vocals",
    sample_rate: int = 16000,
    chunk_seconds: float = 10.0,
    min_source_db: float = -50.0,
    valid_tracks: Sequence[str] | None = None,
    num_valid: int = 14,
    progress: bool = True,
) -> dict[str, int]:
    """Chunk, downmix and resample MUSDB18-HQ into mixture/``source`` pairs with manifests.

    Arguments
    ---------
    musdb_root : path
        The unpacked MUSDB18-HQ folder (``train/`` and ``test/`` of track folders).
    out_dir : path
        Where the chunks and ``train.json``/``valid.json``/``test.json`` go (must not be inside
        ``musdb_root``).
    source : str
        The target stem (``vocals``, ``drums``, ``bass`` or ``other``).
    sample_rate : int
        Output rate.
    chunk_seconds : float
        Chunk length; the last, shorter part of a track is kept if at least half a chunk long.
    min_source_db : float
        Chunks whose source RMS is below this level (dB re full scale) are left out.
    valid_tracks : sequence of str, optional
        Training tracks held out for validation (default: the last ``num_valid`` in name order).
    num_valid : int
        Number of validation tracks when ``valid_tracks`` is not given.
    progress : bool
        Show a progress bar over tracks.

    Returns
    -------
    dict
        Number of chunks per split.
    """
    if source not in MUSDB_SOURCES:
        raise ValueError(f"source must be one of {MUSDB_SOURCES}, got {source!r}")
    if chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
    root, out = os.path.abspath(os.fspath(musdb_root)), os.path.abspath(os.fspath(out_dir))
    if out == root or out.startswith(root + os.sep):
        raise ValueError(f"out_dir {out} lies inside the corpus {root}; the corpus is only read, choose another folder")
    options = {"source": source, "sample_rate": sample_rate, "chunk_seconds": chunk_seconds,
               "min_source_db": min_source_db, "valid_tracks": list(valid_tracks) if valid_tracks else None,
               "num_valid": num_valid, "root": root}
    options_path = os.path.join(out, _OPTIONS)
    manifests = {s: os.path.join(out, f"{s}.json") for s in ("train", "valid", "test")}
    if all(os.path.exists(p) for p in manifests.values()) and os.path.exists(options_path):
        with open(options_path, encoding="utf-8") as f:
            if json.load(f) == options:
                logger.info("MUSDB18-HQ already prepared in %s; skipping", out)
                return {s: len(json.load(open(p, encoding="utf-8"))) for s, p in manifests.items()}

    train_tracks, test_tracks = _tracks(root, "train"), _tracks(root, "test")
    if valid_tracks:
        unknown = sorted(set(valid_tracks) - set(train_tracks))
        if unknown:
            raise ValueError(f"valid_tracks {unknown} are not training tracks of {root}")
        held = set(valid_tracks)
    else:
        if not 0 <= num_valid < len(train_tracks):
            raise ValueError(f"num_valid={num_valid} leaves no training track ({len(train_tracks)} in {root}/train)")
        held = set(train_tracks[len(train_tracks) - num_valid:]) if num_valid else set()
    plan = [("train", "train", t) for t in train_tracks if t not in held]
    plan += [("valid", "train", t) for t in train_tracks if t in held]
    plan += [("test", "test", t) for t in test_tracks]

    from tqdm import tqdm

    entries: dict[str, dict] = {s: {} for s in manifests}
    dropped = 0
    chunk = int(round(chunk_seconds * sample_rate))
    floor = 10 ** (min_source_db / 20)
    for split, folder, track in tqdm(plan, desc="MUSDB18-HQ", unit="track", disable=not progress):
        paths = {name: os.path.join(root, folder, track, f"{name}.wav") for name in ("mixture", source)}
        for name, path in paths.items():
            if not os.path.exists(path):
                raise AudioError(f"MUSDB18-HQ track {track!r}: {path} is missing")
        mix = read_audio(paths["mixture"], sample_rate, as_numpy=True)[0]
        src = read_audio(paths[source], sample_rate, as_numpy=True)[0]
        n = min(len(mix), len(src))
        if abs(len(mix) - len(src)) > sample_rate // 100:
            logger.warning("MUSDB18-HQ track %r: mixture and %s differ in length (%d vs %d samples); cut to the "
                           "shorter", track, source, len(mix), len(src))
        starts = list(range(0, n, chunk))
        for k, start in enumerate(starts):
            piece_src, piece_mix = src[start:start + chunk], mix[start:start + chunk]
            if len(piece_src) < chunk // 2:
                continue
            if math.sqrt(float(np.mean(piece_src.astype(np.float64) ** 2))) < floor:
                dropped += 1
                continue
            uid = f"{_slug(track)}__{k:03d}"
            target = os.path.join(out, split)
            mix_path, src_path = os.path.join(target, f"{uid}_mix.flac"), os.path.join(target, f"{uid}_{source}.flac")
            write_audio(mix_path, piece_mix, sample_rate, protect=[root])
            write_audio(src_path, piece_src, sample_rate, protect=[root])
            entries[split][uid] = {"mix_wav": to_placeholder(mix_path, out), "source_wav": to_placeholder(src_path, out),
                                   "length": len(piece_mix) / sample_rate, "track": track}
    for split, path in manifests.items():
        write_manifest(path, entries[split])
    atomic_write_text(options_path, json.dumps(options, indent=2) + "\n")
    counts = {s: len(e) for s, e in entries.items()}
    logger.info("MUSDB18-HQ prepared in %s: %s chunks (%d near-silent %s chunks left out)", out, counts, dropped, source)
    return counts
