"""LibriSpeech + DEMAND: noisy speech for SSL fine-tuning and downstream ASR (download, mixing, manifests).

The setting of the prior noise-robust SSL fine-tuning code of the position-invariant paper's
authors (research/papers.md, section 3): LibriSpeech utterances mixed with DEMAND noise (channel
``ch01``) at an SNR drawn from {20, 10, 5} dB, with 12 "seen" noise types for training and 6
"unseen" (outdoor) types for a second test set.

Splits (``subsets`` maps them to LibriSpeech folders):

============  ===============  ============================================
split         LibriSpeech      noise
============  ===============  ============================================
train         train-clean-100  seen types, first 80 % of each recording
valid         dev-clean        seen types, 80-90 %
test_seen     test-clean       seen types, last 10 %
test_unseen   test-clean       unseen types, whole recordings
test_clean    test-clean       none (the clean speech as input; not mixed)
============  ===============  ============================================

Implementer's choices (not in the papers): the time split of the seen recordings (no noise
excerpt is shared by training and test), the SNR convention of :func:`sb_mal.data.mixing.mix_at_snr`
(active speech power over the noise excerpt's power; both scaled down together if the mixture
would clip), noise excerpts looped when shorter than the utterance (valid/test portions are 30 s).

Utterance ``u`` of split ``s`` gets its noise type, SNR and excerpt from a generator seeded with
``(seed, s, crc32(u))``: the result does not depend on the order, the number of utterances kept
(``limits``) or on other splits. Mixtures are written (FLAC, atomically) to
``save_folder/<split>/noisy/<id>.flac``; the clean reference is the LibriSpeech file itself,
unless the mixture had to be scaled, in which case the scaled copy is written to
``save_folder/<split>/clean/<id>.flac``. Manifests ``<split>.json`` (``noisy_wav``, ``clean_wav``,
``length``, ``words``, ``speaker``, ``snr_db``, ``noise_type``, ``noise_start``) store mixtures as
``{data_root}/...`` (``data_root`` = ``save_folder``) and LibriSpeech files by absolute path.

A killed preparation resumes: finished mixtures (complete files, thanks to atomic writes) are kept
when the options are unchanged; with other options everything is mixed again.

Expected layouts (``download=True`` fetches what is missing)::

    librispeech_folder/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac (+ .trans.txt)
        (or librispeech_folder/LibriSpeech/<subset>/..., as the openslr archives unpack)
    demand_folder/<NOISE>/ch01.wav   (16 kHz, from <NOISE>_16k.zip on zenodo)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sb_mal.audio import audio_info, read_audio, write_audio
from sb_mal.data.download import download_archive
from sb_mal.data.manifest import to_placeholder, write_manifest
from sb_mal.data.mixing import mix_at_snr
from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SUBSETS",
    "DEMAND_URL",
    "LIBRISPEECH_URL",
    "NOISE_PORTIONS",
    "SEEN_NOISES",
    "SNRS_DB",
    "UNSEEN_NOISES",
    "demand_url",
    "librispeech_url",
    "prepare_librispeech_demand",
]

#: openslr resource 12 (LibriSpeech ASR corpus).
LIBRISPEECH_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
#: zenodo record 1227121 (DEMAND), 16 kHz zips.
DEMAND_URL = "https://zenodo.org/records/1227121/files/{noise}_16k.zip"
SEEN_NOISES = ("DKITCHEN", "DWASHING", "DLIVING", "TMETRO", "TBUS", "TCAR", "OOFFICE", "OHALLWAY", "OMEETING",
               "PSTATION", "PCAFETER", "PRESTO")
UNSEEN_NOISES = ("NFIELD", "NRIVER", "NPARK", "STRAFFIC", "SPSQUARE", "SCAFE")
SNRS_DB = (20.0, 10.0, 5.0)
DEFAULT_SUBSETS = {"train": "train-clean-100", "valid": "dev-clean", "test_seen": "test-clean",
                   "test_unseen": "test-clean"}
#: split -> (start, end) fraction of each noise recording it draws from
NOISE_PORTIONS = {"train": (0.0, 0.8), "valid": (0.8, 0.9), "test_seen": (0.9, 1.0), "test_unseen": (0.0, 1.0)}
_SPLIT_CODES = {"train": 0, "valid": 1, "test_seen": 2, "test_unseen": 3}
_OPTIONS_FILE = "librispeech_demand_prepare.json"
_FORMAT_VERSION = 1


def librispeech_url(subset: str) -> str:
    """openslr URL of a LibriSpeech subset.

    Example
    -------
    >>> librispeech_url("test-clean")
    'https://www.openslr.org/resources/12/test-clean.tar.gz'
    """
    return LIBRISPEECH_URL.format(subset=subset)


def demand_url(noise: str) -> str:
    """zenodo URL of a DEMAND noise type (16 kHz zip).

    Example
    -------
    >>> demand_url("DKITCHEN")
    'https://zenodo.org/records/1227121/files/DKITCHEN_16k.zip'
    """
    return DEMAND_URL.format(noise=noise)


def prepare_librispeech_demand(
    librispeech_folder: str | os.PathLike,
    demand_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    *,
    subsets: Mapping[str, str] | None = None,
    seen_noises: Sequence[str] = SEEN_NOISES,
    unseen_noises: Sequence[str] = UNSEEN_NOISES,
    snrs: Sequence[float] = SNRS_DB,
    channel: str = "ch01",
    seed: int = 75,
    limits: Mapping[str, int | None] | None = None,
    clean_test: bool = True,
    download: bool = True,
    sample_rate: int = 16000,
    skip_prep: bool = False,
    progress: bool = True,
) -> dict[str, str]:
    """Mix LibriSpeech with DEMAND noise and write the manifests (see the module docstring).

    Arguments
    ---------
    librispeech_folder, demand_folder : path
        The corpora (downloaded there if absent and ``download``).
    save_folder : path
        Receives the mixtures, the manifests ``<split>.json`` and an options file.
    subsets : mapping, optional
        Split -> LibriSpeech subset (default :data:`DEFAULT_SUBSETS`); drop a split to skip it.
    seen_noises, unseen_noises : sequence of str
        DEMAND noise types of train/valid/test_seen and of test_unseen (must not overlap).
    snrs : sequence of float
        SNRs (dB) drawn uniformly per utterance.
    channel : str
        DEMAND microphone channel file (``ch01`` .. ``ch16``).
    seed : int
        Seed of all draws (75, as the prior code).
    limits : mapping, optional
        Split -> at most this many utterances (a seeded choice; None = all).
    clean_test : bool
        Also write ``test_clean.json`` (the clean test utterances as input), if ``test_seen`` or
        ``test_unseen`` is prepared.
    download : bool
        Download missing LibriSpeech subsets (openslr) and DEMAND noises (zenodo).
    sample_rate : int
        Rate of the mixtures (LibriSpeech and DEMAND 16k are 16 kHz).
    skip_prep : bool
        Do nothing; return the manifest paths.
    progress : bool
        tqdm progress bars.

    Returns
    -------
    dict
        Split -> manifest path.

    Example
    -------
    >>> import tempfile
    >>> from sb_mal.data.manifest import load_manifest
    >>> root = tempfile.mkdtemp(); rng = np.random.default_rng(0)
    >>> chapter = os.path.join(root, "ls", "test-clean", "61", "70968")
    >>> write_audio(os.path.join(chapter, "61-70968-0000.flac"), 0.1 * rng.standard_normal(8000), 16000)
    >>> _ = Path(chapter, "61-70968.trans.txt").write_text("61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\\n")
    >>> write_audio(os.path.join(root, "demand", "NPARK", "ch01.wav"), 0.1 * rng.standard_normal(32000), 16000)
    >>> paths = prepare_librispeech_demand(os.path.join(root, "ls"), os.path.join(root, "demand"),
    ...                                    os.path.join(root, "mix"), subsets={"test_unseen": "test-clean"},
    ...                                    unseen_noises=["NPARK"], download=False, progress=False)
    >>> entry = load_manifest(paths["test_unseen"], os.path.join(root, "mix"))["61-70968-0000"]
    >>> sorted(paths), entry["noise_type"], entry["snr_db"] in SNRS_DB, entry["words"]
    (['test_clean', 'test_unseen'], 'NPARK', True, 'HE BEGAN A CONFUSED COMPLAINT')
    """
    subsets = dict(DEFAULT_SUBSETS if subsets is None else subsets)
    unknown = sorted(set(subsets) - set(_SPLIT_CODES))
    if unknown:
        raise ValueError(f"subsets: unknown split(s) {unknown}; splits are {sorted(_SPLIT_CODES)}")
    save_folder = os.path.abspath(os.fspath(save_folder))
    splits = [s for s in _SPLIT_CODES if s in subsets]
    if clean_test and any(s.startswith("test") for s in splits):
        splits.append("test_clean")
    paths = {s: os.path.join(save_folder, f"{s}.json") for s in splits}
    if skip_prep:
        return paths
    seen, unseen = [str(n) for n in seen_noises], [str(n) for n in unseen_noises]
    if set(seen) & set(unseen):
        raise ValueError(f"seen and unseen noise types overlap: {sorted(set(seen) & set(unseen))}")
    if not seen and any(s in subsets for s in ("train", "valid", "test_seen")):
        raise ValueError("seen_noises is empty but train/valid/test_seen are requested")
    if not unseen and "test_unseen" in subsets:
        raise ValueError("unseen_noises is empty but test_unseen is requested")
    snrs = [float(v) for v in snrs]
    if not snrs or not all(math.isfinite(v) for v in snrs):
        raise ValueError(f"snrs must be a non-empty list of finite dB values, got {snrs}")
    limits = {k: v for k, v in dict(limits or {}).items() if v is not None}
    for split, value in limits.items():
        if split not in _SPLIT_CODES or int(value) < 1:
            raise ValueError(f"limits: expected split -> positive count for splits {sorted(_SPLIT_CODES)}, "
                             f"got {split!r}: {value!r}")
    mixing = {"format_version": _FORMAT_VERSION, "subsets": subsets, "seen_noises": seen, "unseen_noises": unseen,
              "snrs": snrs, "channel": channel, "seed": int(seed), "sample_rate": int(sample_rate),
              "librispeech_folder": os.path.abspath(os.fspath(librispeech_folder)),
              "demand_folder": os.path.abspath(os.fspath(demand_folder))}
    options = {**mixing, "limits": {k: int(v) for k, v in sorted(limits.items())}, "clean_test": bool(clean_test)}
    options_path = os.path.join(save_folder, _OPTIONS_FILE)
    stored = _stored(options_path)
    if stored.get("complete") and stored.get("options") == options and all(os.path.isfile(p) for p in paths.values()):
        logger.info("LibriSpeech+DEMAND manifests in %s are up to date, skipping preparation", save_folder)
        return paths
    reuse = stored.get("mixing") == mixing  # finished mixtures of the same mixing options stay valid
    needed = sorted(set(subsets.values()))
    noises = sorted((set(seen) if set(subsets) - {"test_unseen"} else set()) |
                    (set(unseen) if "test_unseen" in subsets else set()))
    subset_dirs = {s: _ensure_librispeech(os.fspath(librispeech_folder), s, download) for s in needed}
    noise_files = {n: _ensure_demand(os.fspath(demand_folder), n, channel, download) for n in noises}
    os.makedirs(save_folder, exist_ok=True)
    atomic_write_text(options_path, json.dumps({"complete": False, "options": options, "mixing": mixing},
                                               indent=2) + "\n")
    manifests = {}
    for split in (s for s in splits if s != "test_clean"):
        utterances = _select(_list_utterances(subset_dirs[subsets[split]]), limits.get(split), seed)
        types = unseen if split == "test_unseen" else seen
        manifests[split] = _mix_split(split, utterances, {n: noise_files[n] for n in types}, snrs, seed, save_folder,
                                      sample_rate, reuse, progress)
    if "test_clean" in splits:
        source = next(s for s in ("test_seen", "test_unseen") if s in subsets)
        utterances = _select(_list_utterances(subset_dirs[subsets[source]]), limits.get(source), seed)
        manifests["test_clean"] = {
            uid: {"noisy_wav": to_placeholder(path, save_folder), "clean_wav": to_placeholder(path, save_folder),
                  "length": round(audio_info(path).duration, 6), "words": words, "speaker": uid.split("-")[0]}
            for uid, (path, words) in utterances.items()}
    for split, manifest in manifests.items():
        write_manifest(paths[split], manifest)
        logger.info("LibriSpeech+DEMAND %s: %d utterances -> %s", split, len(manifest), paths[split])
    atomic_write_text(options_path, json.dumps({"complete": True, "options": options, "mixing": mixing},
                                               indent=2) + "\n")
    return paths


def _stored(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _librispeech_dir(folder: str, subset: str) -> str | None:
    for candidate in (os.path.join(folder, subset), os.path.join(folder, "LibriSpeech", subset)):
        if os.path.isdir(candidate):
            return candidate
    return None


def _ensure_librispeech(folder: str, subset: str, download: bool) -> str:
    found = _librispeech_dir(folder, subset)
    if found:
        return found
    if not download:
        raise FileNotFoundError(f"LibriSpeech subset {subset!r} not found in {folder} (expected {folder}/{subset}/"
                                f"<speaker>/<chapter>/*.flac or {folder}/LibriSpeech/{subset}/...); pass "
                                f"download=True or get {librispeech_url(subset)}")
    os.makedirs(folder, exist_ok=True)
    archive, scratch = os.path.join(folder, f"{subset}.tar.gz"), os.path.join(folder, f".unpack-{subset}")
    download_archive(librispeech_url(subset), archive, scratch, f"unpack it into {folder} (giving {folder}/{subset}/)")
    unpacked = _librispeech_dir(scratch, subset)
    if unpacked is None:
        raise FileNotFoundError(f"{archive}: expected LibriSpeech/{subset}/ inside the archive")
    target = os.path.join(folder, subset)
    os.replace(unpacked, target)  # whole folder appears at once: a killed unpack leaves only the scratch
    shutil.rmtree(scratch, ignore_errors=True)
    if os.path.exists(archive):
        os.unlink(archive)
    return target


def _ensure_demand(folder: str, noise: str, channel: str, download: bool) -> str:
    path = os.path.join(folder, noise, f"{channel}.wav")
    if os.path.isfile(path):
        return path
    if not download:
        raise FileNotFoundError(f"DEMAND noise {noise!r} not found: missing {path} (expected {folder}/<NOISE>/"
                                f"{channel}.wav); pass download=True or get {demand_url(noise)}")
    os.makedirs(folder, exist_ok=True)
    archive, scratch = os.path.join(folder, f"{noise}_16k.zip"), os.path.join(folder, f".unpack-{noise}")
    download_archive(demand_url(noise), archive, scratch,
                     f"unzip it into {folder} (giving {os.path.join(folder, noise, channel)}.wav)")
    candidates = [p.parent for p in Path(scratch).rglob(f"{channel}.wav") if p.parent.name == noise]
    if not candidates:
        raise FileNotFoundError(f"{archive}: expected {noise}/{channel}.wav inside the zip")
    if os.path.isdir(os.path.join(folder, noise)):
        shutil.rmtree(os.path.join(folder, noise))  # an incomplete folder without the channel file
    os.replace(candidates[0], os.path.join(folder, noise))
    shutil.rmtree(scratch, ignore_errors=True)
    if os.path.exists(archive):
        os.unlink(archive)
    return path


def _list_utterances(subset_dir: str) -> dict[str, tuple[str, str]]:
    """``{utterance id: (flac path, transcript)}`` of a LibriSpeech subset folder."""
    flacs = sorted(Path(subset_dir).glob("*/*/*.flac"))
    if not flacs:
        raise FileNotFoundError(f"{subset_dir}: no <speaker>/<chapter>/*.flac files")
    words: dict[str, str] = {}
    for trans in Path(subset_dir).glob("*/*/*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, _, text = line.strip().partition(" ")
            if uid:
                words[uid] = " ".join(text.split())
    missing = [p.stem for p in flacs if p.stem not in words]
    if missing:
        raise ValueError(f"{subset_dir}: {len(missing)} utterance(s) have no line in a *.trans.txt file, "
                         f"e.g. {missing[0]!r}")
    return {p.stem: (str(p), words[p.stem]) for p in flacs}


def _select(utterances: dict, limit: int | None, seed: int) -> dict:
    if limit is None or limit >= len(utterances):
        return utterances
    ranked = sorted(utterances, key=lambda u: (zlib.crc32(f"{seed}:{u}".encode()), u))
    keep = set(ranked[: int(limit)])
    return {u: v for u, v in utterances.items() if u in keep}


def _draw(split: str, uid: str, seed: int, types: Sequence[str], snrs: Sequence[float]):
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], zlib.crc32(uid.encode())])
    return rng, types[int(rng.integers(len(types)))], float(snrs[int(rng.integers(len(snrs)))])


def _excerpt(info, portion: tuple[float, float], length: int, rng, sample_rate: int) -> tuple[int, int]:
    """Start and stop (file frames) of the noise read for ``length`` samples at ``sample_rate``."""
    first, last = int(portion[0] * info.frames), int(portion[1] * info.frames)
    need = int(math.ceil(length * info.sample_rate / sample_rate)) + 1
    if last - first > need:
        start = first + int(rng.integers(0, last - first - need + 1))
        return start, start + need
    return first, last  # shorter than the utterance: looped


def _noise(path: str, start: int, stop: int, length: int, sample_rate: int) -> np.ndarray:
    wav, _ = read_audio(path, sample_rate, start=start, stop=stop, as_numpy=True)
    if len(wav) < length:
        wav = np.tile(wav, int(math.ceil(length / max(1, len(wav)))) + 1)
    return wav[:length]


def _mix_split(split, utterances, noise_files, snrs, seed, save_folder, sample_rate, reuse, progress) -> dict:
    from tqdm import tqdm

    types = sorted(noise_files)
    noisy_dir, clean_dir = os.path.join(save_folder, split, "noisy"), os.path.join(save_folder, split, "clean")
    entries = {}
    for uid, (path, words) in tqdm(utterances.items(), desc=f"mix {split}", unit="utt", disable=not progress):
        rng, noise_type, snr = _draw(split, uid, seed, types, snrs)
        noisy_path, scaled_path = os.path.join(noisy_dir, f"{uid}.flac"), os.path.join(clean_dir, f"{uid}.flac")
        info = audio_info(noise_files[noise_type])
        if reuse and os.path.isfile(noisy_path):  # finished earlier with the same options: same draws
            frames = audio_info(noisy_path).frames
            start, _ = _excerpt(info, NOISE_PORTIONS[split], frames, rng, sample_rate)
        else:
            clean, _ = read_audio(path, sample_rate, as_numpy=True)
            frames = len(clean)
            start, stop = _excerpt(info, NOISE_PORTIONS[split], frames, rng, sample_rate)
            noise = _noise(noise_files[noise_type], start, stop, frames, sample_rate)
            noisy, clean_scaled, gain = mix_at_snr(clean, noise, snr, sample_rate)
            if gain < 1.0:  # the reference is the scaled clean; written before the mixture marks it done
                write_audio(scaled_path, clean_scaled, sample_rate)
            elif os.path.exists(scaled_path):
                os.unlink(scaled_path)  # stale copy from other options
            write_audio(noisy_path, noisy, sample_rate)
        clean_path = scaled_path if os.path.isfile(scaled_path) else path
        entries[uid] = {"noisy_wav": to_placeholder(noisy_path, save_folder),
                        "clean_wav": to_placeholder(clean_path, save_folder), "length": round(frames / sample_rate, 6),
                        "words": words, "speaker": uid.split("-")[0], "snr_db": snr, "noise_type": noise_type,
                        "noise_start": round(start / info.sample_rate, 6)}
    return entries
