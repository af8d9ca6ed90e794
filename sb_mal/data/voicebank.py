"""VoiceBank-DEMAND (Valentini-Botinhao et al., 2016/2017): download, resample, manifests.

The corpus lives at https://datashare.ed.ac.uk/handle/10283/2791 (48 kHz WAV zips). After
:func:`prepare_voicebank`, ``data_folder`` holds the untouched 48 kHz folders, resampled copies in
``<name>_16k/`` folders and, optionally, the transcripts::

    data_folder/clean_trainset_28spk_wav/p226_001.wav      (48 kHz, never modified)
    data_folder/clean_trainset_28spk_wav_16k/p226_001.wav  (16 kHz)
    data_folder/trainset_28spk_txt/p226_001.txt            (optional)

and ``save_folder`` holds SpeechBrain JSON manifests ``train.json``, ``valid.json`` and
``test.json`` whose paths use the ``{data_root}`` placeholder (fill it with ``data_folder``). The
validation set is the training utterances of ``valid_speakers`` (default p226 and p287, as in
SpeechBrain's recipe); those speakers are held out of ``train.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import string
import zipfile
from collections.abc import Sequence
from pathlib import Path

from sb_mal.audio import AudioError, audio_info, list_audio_files, read_audio, write_audio
from sb_mal.data.download import download_archive
from sb_mal.data.manifest import to_placeholder, write_manifest
from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "VOICEBANK_OPTIONS_FILE",
    "VOICEBANK_SUBSETS",
    "VOICEBANK_TRANSCRIPTS",
    "VOICEBANK_URL_PREFIX",
    "prepare_voicebank",
    "voicebank_urls",
]

#: Edinburgh DataShare folder of the corpus (handle 10283/2791), as used by SpeechBrain's recipe.
VOICEBANK_URL_PREFIX = "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/"
#: (split, kind) -> folder name of the 48 kHz audio; each comes from ``<folder>.zip``.
VOICEBANK_SUBSETS = {
    ("train", "clean"): "clean_trainset_28spk_wav",
    ("train", "noisy"): "noisy_trainset_28spk_wav",
    ("test", "clean"): "clean_testset_wav",
    ("test", "noisy"): "noisy_testset_wav",
}
#: split -> folder of ``<utt>.txt`` transcripts (optional; gives the ``words`` manifest field).
VOICEBANK_TRANSCRIPTS = {"train": "trainset_28spk_txt", "test": "testset_txt"}
#: Name of the options file written next to the manifests (skip re-preparation if unchanged).
VOICEBANK_OPTIONS_FILE = "voicebank_prepare.json"
_EXPECTED_COUNTS = {"train": 11572, "test": 824}
_FORMAT_VERSION = 1
_UTT = re.compile(r"^(p\d+)_\d+$")


def voicebank_urls(transcripts: bool = True) -> list[str]:
    """Download URLs of the official zips (audio first, then the transcripts if asked).

    Example
    -------
    >>> voicebank_urls(transcripts=False)[0]
    'https://datashare.ed.ac.uk/bitstream/handle/10283/2791/clean_trainset_28spk_wav.zip'
    """
    names = list(VOICEBANK_SUBSETS.values())
    if transcripts:
        names += list(VOICEBANK_TRANSCRIPTS.values())
    return [f"{VOICEBANK_URL_PREFIX}{name}.zip" for name in names]


def _rate_folder(name: str, sample_rate: int) -> str:
    suffix = f"{sample_rate // 1000}k" if sample_rate % 1000 == 0 else f"{sample_rate}hz"
    return f"{name}_{suffix}"


def prepare_voicebank(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    *,
    valid_speakers: Sequence[str] = ("p226", "p287"),
    download: bool = True,
    sample_rate: int = 16000,
    skip_prep: bool = False,
    num_workers: int = 1,
    progress: bool = True,
) -> dict:
    """Download (if needed) and resample VoiceBank-DEMAND, and write its train/valid/test manifests.

    Arguments
    ---------
    data_folder : path
        Folder holding (or receiving) the corpus folders (see the module docstring).
    save_folder : path
        Where ``train.json``, ``valid.json``, ``test.json`` and the options file are written.
    valid_speakers : sequence of str
        Training speakers whose utterances form ``valid.json`` (and are left out of ``train.json``).
    download : bool
        Download missing zips from Edinburgh DataShare; if False a missing corpus is an error.
    sample_rate : int
        Rate of the audio the manifests point to; other rates are resampled into
        ``<name>_16k``-style folders (complete files already there are kept, so an interrupted
        run resumes).
    skip_prep : bool
        Do nothing and return the manifest paths.
    num_workers : int
        Processes used for resampling (1: in this process).
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path}`` of the manifests (str).

    Example
    -------
    >>> import tempfile, numpy as np
    >>> from sb_mal.audio import write_audio
    >>> from sb_mal.data.manifest import load_manifest
    >>> root = tempfile.mkdtemp()
    >>> utts = {"trainset_28spk": ["p226_001", "p250_001"], "testset": ["p232_001"]}
    >>> for split, names in utts.items():
    ...     for kind in ("clean", "noisy"):
    ...         for utt in names:
    ...             path = os.path.join(root, f"{kind}_{split}_wav", utt + ".wav")
    ...             write_audio(path, np.full(4800, 0.1), 48000)
    >>> paths = prepare_voicebank(root, os.path.join(root, "json"), valid_speakers=["p226"],
    ...                           download=False, progress=False)
    >>> {split: sorted(load_manifest(path, root)) for split, path in paths.items()}
    {'train': ['p250_001'], 'valid': ['p226_001'], 'test': ['p232_001']}
    >>> load_manifest(paths["test"], root)["p232_001"]["length"]
    0.1
    """
    save_folder = os.fspath(save_folder)
    paths = {s: os.path.join(save_folder, f"{s}.json") for s in ("train", "valid", "test")}
    if skip_prep:
        return paths
    if isinstance(valid_speakers, str):
        valid_speakers = (valid_speakers,)
    valid_speakers = sorted(set(valid_speakers))
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
    data_folder = os.path.abspath(os.fspath(data_folder))
    options = {"format_version": _FORMAT_VERSION, "sample_rate": sample_rate,
               "valid_speakers": valid_speakers}
    options_path = os.path.join(save_folder, VOICEBANK_OPTIONS_FILE)
    if all(os.path.isfile(p) for p in paths.values()) and _stored_options(options_path) == options:
        logger.info("VoiceBank manifests in %s are up to date, skipping preparation", save_folder)
        return paths

    _ensure_corpus(data_folder, download, sample_rate)
    for split in ("train", "test"):  # fail fast, before any resampling
        noisy, clean = (_source_folder(data_folder, VOICEBANK_SUBSETS[split, k], sample_rate)
                        for k in ("noisy", "clean"))
        _check_partners(list_audio_files(noisy, extensions=(".wav",), recursive=False), clean)
    folders = {}
    for (split, kind), name in VOICEBANK_SUBSETS.items():
        folders[split, kind] = _audio_folder(data_folder, name, sample_rate, num_workers, progress)
    entries = {}
    for split in ("train", "test"):
        txt = os.path.join(data_folder, VOICEBANK_TRANSCRIPTS[split])
        entries[split] = _entries(folders[split, "noisy"], folders[split, "clean"], data_folder,
                                  sample_rate, txt if os.path.isdir(txt) else None)
        if len(entries[split]) != _EXPECTED_COUNTS[split]:
            logger.warning("VoiceBank %s set has %d utterances; the official corpus has %d",
                           split, len(entries[split]), _EXPECTED_COUNTS[split])
    found = {e["speaker"] for e in entries["train"].values()}
    missing = [s for s in valid_speakers if s not in found]
    if missing:
        raise ValueError(f"valid_speakers {missing} have no utterances in the training set of "
                         f"{data_folder} (speakers found: {', '.join(sorted(found))})")
    manifests = {
        "train": {u: e for u, e in entries["train"].items() if e["speaker"] not in valid_speakers},
        "valid": {u: e for u, e in entries["train"].items() if e["speaker"] in valid_speakers},
        "test": entries["test"],
    }
    if os.path.exists(options_path):
        os.unlink(options_path)  # never leave stale options next to half-rewritten manifests
    for split, manifest in manifests.items():
        write_manifest(paths[split], manifest)
        logger.info("VoiceBank %s: %d utterances -> %s", split, len(manifest), paths[split])
    atomic_write_text(options_path, json.dumps(options, indent=2) + "\n")
    return paths


def _stored_options(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _ensure_corpus(data_folder: str, download: bool, sample_rate: int) -> None:
    """Make sure every audio subset is present (48 kHz or already resampled); download the rest."""

    def present(name: str) -> bool:
        return any(os.path.isdir(os.path.join(data_folder, n))
                   for n in (name, _rate_folder(name, sample_rate)))

    missing = [name for name in VOICEBANK_SUBSETS.values() if not present(name)]
    if not missing:
        return
    if not download:
        raise FileNotFoundError(
            f"VoiceBank-DEMAND not found in {data_folder}: missing the folder(s) "
            f"{', '.join(missing)}. Expected subfolders: "
            f"{', '.join(VOICEBANK_SUBSETS.values())} (48 kHz, from the zips at "
            f"{VOICEBANK_URL_PREFIX}) and optionally {', '.join(VOICEBANK_TRANSCRIPTS.values())}; "
            "or let it download them (download=True)")
    os.makedirs(data_folder, exist_ok=True)
    for name in missing:
        _download_zip(data_folder, name)
    for name in VOICEBANK_TRANSCRIPTS.values():
        if not os.path.isdir(os.path.join(data_folder, name)):
            try:
                _download_zip(data_folder, name)
            except Exception as err:  # transcripts are optional: go on without `words`
                logger.warning("could not get the VoiceBank transcripts %s (%s); manifests will "
                               "have no 'words' field", name, err)


def _download_zip(data_folder: str, name: str) -> None:
    """Download ``<name>.zip``, unpack it in a scratch folder, then move ``<name>/`` into place."""
    url = f"{VOICEBANK_URL_PREFIX}{name}.zip"
    archive = os.path.join(data_folder, f"{name}.zip")
    if os.path.exists(archive) and not zipfile.is_zipfile(archive):
        logger.warning("%s is not a complete zip (interrupted download?); downloading it again",
                       archive)
        os.unlink(archive)
    scratch = os.path.join(data_folder, f".unpack-{name}")
    download_archive(url, archive, scratch, f"unzip it into {data_folder} (giving {os.path.join(data_folder, name)}/)")
    candidates = [p for p in (Path(scratch) / name, *Path(scratch).glob(f"*/{name}")) if p.is_dir()]
    if not candidates:
        found = sorted(p.name for p in Path(scratch).iterdir()) if os.path.isdir(scratch) else []
        raise FileNotFoundError(
            f"{archive}: expected a folder {name!r} inside the zip, found {found}")
    os.replace(candidates[0], os.path.join(data_folder, name))
    shutil.rmtree(scratch, ignore_errors=True)
    if os.path.exists(archive):
        os.unlink(archive)


def _source_folder(data_folder: str, name: str, sample_rate: int) -> str:
    """The 48 kHz folder of ``name`` if present, else its copy at ``sample_rate``."""
    original = os.path.join(data_folder, name)
    if os.path.isdir(original):
        return original
    target = os.path.join(data_folder, _rate_folder(name, sample_rate))
    if os.path.isdir(target):
        return target  # only the resampled copy exists (e.g. SpeechBrain's noisy-vctk-16k.zip)
    raise FileNotFoundError(f"{original}: VoiceBank folder missing (and no {target})")


def _audio_folder(data_folder: str, name: str, sample_rate: int, num_workers: int,
                  progress: bool) -> str:
    """Folder of ``name`` at ``sample_rate``: the original if it has that rate, else a copy."""
    source = _source_folder(data_folder, name, sample_rate)
    sources = list_audio_files(source, extensions=(".wav",), recursive=False)
    if audio_info(sources[0]).sample_rate == sample_rate:
        return source
    target = os.path.join(data_folder, _rate_folder(name, sample_rate))
    _resample_files(sources, target, sample_rate, num_workers, progress, desc=name)
    return target


def _resample_files(sources: list[str], target: str, sample_rate: int, num_workers: int,
                    progress: bool, desc: str) -> None:
    from tqdm import tqdm

    os.makedirs(target, exist_ok=True)
    for stale in Path(target).glob(".tmp-*"):  # leftovers of a killed atomic write
        stale.unlink()
    todo = []
    for src in sources:
        dst = os.path.join(target, os.path.basename(src))
        if not _is_resampled(src, dst, sample_rate):
            todo.append((src, dst, sample_rate))
    if not todo:
        logger.info("%s: all %d files already at %d Hz in %s",
                    desc, len(sources), sample_rate, target)
        return
    logger.info("%s: resampling %d of %d files to %d Hz into %s",
                desc, len(todo), len(sources), sample_rate, target)
    with tqdm(total=len(todo), desc=f"resample {desc}", unit="file", disable=not progress) as bar:
        if num_workers == 1:
            for job in todo:
                _resample_one(job)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import torchaudio.functional  # noqa: F401  (imported once here; forked workers inherit it)

        # fork (as torch's DataLoader does, with 1 thread per worker) starts in milliseconds;
        # spawn re-imports torch in every worker and is the fallback where fork is missing.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_worker)
        try:
            for _ in pool.map(_resample_one, todo, chunksize=8):
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _is_resampled(src: str, dst: str, sample_rate: int) -> bool:
    """True if ``dst`` is a complete resampled copy of ``src`` (header rate and length agree)."""
    if not os.path.isfile(dst):
        return False
    try:
        src_info, dst_info = audio_info(src), audio_info(dst)
    except AudioError:
        return False
    expected = math.ceil(src_info.frames * sample_rate / src_info.sample_rate)
    return dst_info.sample_rate == sample_rate and abs(dst_info.frames - expected) <= 1


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _resample_one(job: tuple[str, str, int]) -> str:
    src, dst, sample_rate = job
    try:
        wav, _ = read_audio(src, sample_rate=sample_rate, as_numpy=True)
        write_audio(dst, wav, sample_rate, protect=[src])
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(
            f"{src}: could not resample to {sample_rate} Hz into {dst} ({err})") from err
    return dst


def _check_partners(noisy: list[str], clean_dir: str) -> None:
    """Error naming the first noisy file that has no same-named file in ``clean_dir``."""
    lacking = [p for p in noisy if not os.path.isfile(os.path.join(clean_dir, os.path.basename(p)))]
    if lacking:
        expected = os.path.join(clean_dir, os.path.basename(lacking[0]))
        raise FileNotFoundError(
            f"{lacking[0]}: noisy file without clean partner (expected {expected}); "
            f"{len(lacking)} noisy file(s) in {os.path.dirname(lacking[0])} lack a partner")


def _entries(noisy_dir: str, clean_dir: str, data_root: str, sample_rate: int,
             txt_dir: str | None) -> dict:
    """Manifest entries of one split; every noisy file needs a clean file of the same duration."""
    noisy = list_audio_files(noisy_dir, extensions=(".wav",), recursive=False)
    _check_partners(noisy, clean_dir)
    entries, no_words = {}, 0
    for path in noisy:
        uid = Path(path).stem
        match = _UTT.match(uid)
        if not match:
            raise ValueError(f"{path}: VoiceBank file names look like p226_001.wav, got {uid!r}")
        clean = os.path.join(clean_dir, os.path.basename(path))
        n_info, c_info = audio_info(path), audio_info(clean)
        for info in (n_info, c_info):
            if info.sample_rate != sample_rate:
                raise AudioError(f"{info.path}: sample rate is {info.sample_rate} Hz, "
                                 f"expected {sample_rate} Hz")
        if abs(n_info.duration - c_info.duration) > 1e-3:
            raise AudioError(f"{path}: duration {n_info.duration:.4f} s differs from its clean "
                             f"file {clean} ({c_info.duration:.4f} s)")
        entry = {
            "noisy_wav": to_placeholder(path, data_root),
            "clean_wav": to_placeholder(clean, data_root),
            "length": round(n_info.duration, 6),
            "speaker": match.group(1),
        }
        if txt_dir is not None:
            words = _read_words(os.path.join(txt_dir, uid + ".txt"))
            if words is None:
                no_words += 1
            else:
                entry["words"] = words
        entries[uid] = entry
    if no_words:
        logger.warning("%d utterance(s) of %s have no transcript in %s",
                       no_words, noisy_dir, txt_dir)
    return entries


_PUNCT = str.maketrans("", "", string.punctuation)


def _read_words(path: str) -> str | None:
    """Transcript as upper-case words without punctuation (SpeechBrain's convention), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return " ".join(text.translate(_PUNCT).upper().split())
