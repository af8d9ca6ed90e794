"""SpeechBrain JSON manifests for noisy/clean pairs, and preparation from folders of pairs.

A manifest is a JSON object keyed by utterance id::

    {"test_000": {"noisy_wav": "{data_root}/noisy/test_000.flac",
                  "clean_wav": "{data_root}/clean/test_000.flac",
                  "length": 3.47}}

``length`` is in seconds. Paths under ``data_root`` are stored with the ``{data_root}``
placeholder so a prepared corpus can move (SpeechBrain fills it with ``replacements``).
Separation manifests use ``mix_wav``/``source_wav`` the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sb_mal.audio import AUDIO_EXTENSIONS, AudioError, audio_info, list_audio_files
from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "Pairing",
    "enhanced_for_manifest",
    "existing_entries",
    "keyed_files",
    "load_manifest",
    "manifest_paths",
    "pair_folders",
    "pair_key",
    "prepare_pairs",
    "to_placeholder",
    "write_manifest",
]


def to_placeholder(path: str | os.PathLike, data_root: str | os.PathLike | None) -> str:
    """``{data_root}/rel/path`` if ``path`` lies under ``data_root``, else the absolute path.

    Example
    -------
    >>> to_placeholder("/data/vb/clean/a.wav", "/data/vb")
    '{data_root}/clean/a.wav'
    >>> to_placeholder("/elsewhere/a.wav", "/data/vb")
    '/elsewhere/a.wav'
    """
    path = os.path.abspath(os.fspath(path))
    if data_root is None:
        return path
    root = os.path.abspath(os.fspath(data_root))
    if os.path.commonpath([path, root]) == root:
        return "{data_root}/" + Path(os.path.relpath(path, root)).as_posix()
    return path


def write_manifest(path: str | os.PathLike, entries: dict) -> None:
    """Write a manifest (dict of id -> dict) as JSON, atomically."""
    if not isinstance(entries, dict):
        raise TypeError(f"manifest entries must be a dict of id -> fields, got {type(entries).__name__}")
    atomic_write_text(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")


def load_manifest(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                  required: tuple[str, ...] = ()) -> dict:
    """Read a manifest and fill ``{data_root}`` placeholders.

    Raises a ``ValueError`` naming the file (and the entry) for malformed or non-UTF-8 JSON, an
    utterance id given twice, an entry without a ``required`` field, or a placeholder with no
    ``data_root`` given.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.json")
    >>> _ = open(p, "w").write('{"a": {"clean_wav": "x.wav"}, "a": {"clean_wav": "y.wav"}}')
    >>> load_manifest(p)
    Traceback (most recent call last):
    ...
    ValueError: ...m.json: utterance id 'a' appears more than once
    """
    path = os.fspath(path)
    repeated: list[str] = []

    def unique(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                repeated.append(key)
            seen[key] = value
        return seen

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: manifest not found") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); a manifest is UTF-8 JSON") \
            from err
    try:
        data = json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a manifest must be a JSON object keyed by utterance id")
    if repeated:
        what = "utterance id" if repeated[0] in data else "field"
        raise ValueError(f"{path}: {what} {repeated[0]!r} appears more than once")
    root = None if data_root is None else os.fspath(data_root)
    out = {}
    for uid, fields in data.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: entry {uid!r} is not an object")
        missing = [key for key in required if key not in fields]
        if missing:
            raise ValueError(f"{path}: entry {uid!r} has no {', '.join(map(repr, missing))}")
        entry = {}
        for key, value in fields.items():
            if isinstance(value, str) and "{data_root}" in value:
                if root is None:
                    raise ValueError(f"{path}: entry {uid!r} uses {{data_root}} but no data_root was given")
                value = value.replace("{data_root}", root)
            entry[key] = value
        out[uid] = entry
    return out


@dataclass
class Pairing:
    """Files matched to their clean references: ``ids``, ``files``, ``clean``, and ``unmatched``
    (what was left out and why: a reason -> the files or ids), which is never fatal here."""

    ids: list
    files: list
    clean: list
    unmatched: dict = field(default_factory=dict)


def keyed_files(folder: str | os.PathLike, match: str | Callable[[str], str] = "name",
                extensions=AUDIO_EXTENSIONS) -> tuple[dict, dict]:
    """``({key: file}, {key: [files]})``: the audio files of ``folder`` by pairing key, and the keys
    that several files share (``a.wav`` and ``a.flac``), which pair with nothing.

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> from sb_mal.audio import write_audio
    >>> d = tempfile.mkdtemp()
    >>> for name in ("a.wav", "a.flac", "b.wav"):
    ...     write_audio(os.path.join(d, name), np.zeros(160), 16000)
    >>> unique, ambiguous = keyed_files(d)
    >>> sorted(unique), sorted(ambiguous)
    (['b'], ['a'])
    """
    folder = os.fspath(folder)
    found: dict[str, list[str]] = {}
    for p in list_audio_files(folder, extensions):
        found.setdefault(pair_key(p, folder, match), []).append(p)
    return ({k: v[0] for k, v in found.items() if len(v) == 1},
            {k: sorted(v) for k, v in found.items() if len(v) > 1})


def _drop_empty(unmatched: dict) -> dict:
    return {k: v for k, v in unmatched.items() if v}


def pair_folders(clean_dir: str | os.PathLike, other_dir: str | os.PathLike,
                 match: str | Callable[[str], str] = "name") -> Pairing:
    """The files of ``other_dir`` with a same-keyed partner in ``clean_dir`` (see :func:`pair_key`).

    Files without a partner, and keys that several files share in either folder (which file was
    meant cannot be told), are left out and listed in ``unmatched``; no pair at all is an error.
    """
    clean_dir, other_dir = os.fspath(clean_dir), os.fspath(other_dir)
    clean, clean_amb = keyed_files(clean_dir, match)
    other, other_amb = keyed_files(other_dir, match)
    ambiguous = set(clean_amb) | set(other_amb)
    common = sorted((set(clean) & set(other)) - ambiguous)
    if not common:
        raise ValueError(f"no file in {other_dir} has a same-named partner in {clean_dir}")
    unmatched = {
        f"no file in {other_dir}": [clean[k] for k in sorted(set(clean) - set(other) - ambiguous)],
        f"no clean reference in {clean_dir}": [other[k] for k in sorted(set(other) - set(clean) - ambiguous)],
        f"ambiguous: several files share one name in {other_dir}": [p for k in sorted(other_amb) for p in other_amb[k]],
        f"ambiguous: several files share one name in {clean_dir}": [p for k in sorted(clean_amb) for p in clean_amb[k]],
    }
    return Pairing(common, [other[k] for k in common], [clean[k] for k in common], _drop_empty(unmatched))


def enhanced_for_manifest(manifest: dict, folder: str | os.PathLike) -> Pairing:
    """``<folder>/<id>.<ext>`` (or the entry's noisy file name) for every manifest entry.

    Entries without a file, entries for which several files qualify, and files of no entry are left
    out and listed in ``unmatched``; no entry matched at all is an error.
    """
    folder = os.fspath(folder)
    ids, enh, clean, missing, ambiguous = [], [], [], [], []
    for uid, entry in manifest.items():
        candidates = [os.path.join(folder, uid + ext) for ext in AUDIO_EXTENSIONS]
        if "noisy_wav" in entry:
            candidates.append(os.path.join(folder, os.path.basename(entry["noisy_wav"])))
        found = sorted({os.path.abspath(c) for c in candidates if os.path.isfile(c)})
        if not found:
            missing.append(uid)
        elif len(found) > 1:
            ambiguous.append(f"{uid}: {', '.join(found)}")
        else:
            ids.append(uid)
            enh.append(found[0])
            clean.append(entry["clean_wav"])
    if not ids:
        raise ValueError(f"{folder} has no enhanced file for any manifest entry (looked for <id>.wav/.flac/... and "
                         "the noisy file's name)" + (f"; {len(ambiguous)} entries had several" if ambiguous else ""))
    used = {os.path.abspath(p) for p in enh} | {p for a in ambiguous for p in a.split(": ", 1)[1].split(", ")}
    extra = [str(p) for p in list_audio_files(folder) if os.path.abspath(p) not in used]
    unmatched = {f"no file in {folder} for manifest entries": missing,
                 f"ambiguous: several files in {folder} for one manifest entry": ambiguous,
                 "files of no manifest entry": extra}
    return Pairing(ids, enh, clean, _drop_empty(unmatched))


def existing_entries(manifest: dict, path: str, root: str) -> tuple[dict, dict]:
    """The entries whose audio files exist, and the others (as ``unmatched``); none existing is an error."""
    keys = ("clean_wav", "noisy_wav")
    ok = {u: e for u, e in manifest.items() if all(os.path.isfile(e[k]) for k in keys if k in e)}
    if not ok:
        first = next(iter(manifest.values()))
        raise ValueError(f"none of the audio files of {path} exists (e.g. {first.get('clean_wav')}); its "
                         f"{{data_root}} was {root} (--data-root; default: the manifest's folder)")
    absent = [u for u in manifest if u not in ok]
    return ok, _drop_empty({f"audio file missing ({path})": absent})


def manifest_paths(manifest: dict, key: str) -> list[str]:
    """The ``key`` field (e.g. ``clean_wav``) of every entry, in manifest order."""
    try:
        return [entry[key] for entry in manifest.values()]
    except KeyError:
        raise KeyError(f"manifest entries lack the field {key!r}") from None


_FILEID = re.compile(r"fileid_(\d+)")


def pair_key(path: str, root: str, match: str | Callable[[str], str] = "name") -> str:
    """Key that pairs a noisy file with its clean file.

    ``"name"``: the path relative to its folder without extension (same-named pairs);
    ``"fileid"``: the ``fileid_<n>`` tag of the DNS-Challenge synthetic sets
    (``noisy/book_..._fileid_12.wav`` pairs with ``clean/clean_fileid_12.wav``);
    a callable gets the file path and returns the key.

    Example
    -------
    >>> pair_key("/d/noisy/book_x_snr5_fileid_12.wav", "/d/noisy", "fileid")
    'fileid_12'
    """
    if callable(match):
        return match(path)
    rel = Path(os.path.relpath(path, root)).with_suffix("").as_posix()
    if match == "name":
        return rel
    if match == "fileid":
        found = _FILEID.findall(Path(path).name)
        if not found:
            raise ValueError(f"{path}: no 'fileid_<n>' in the file name (match='fileid')")
        return f"fileid_{found[-1]}"
    raise ValueError(f"match must be 'name', 'fileid' or a callable, got {match!r}")


def prepare_pairs(
    noisy_dir: str | os.PathLike,
    clean_dir: str | os.PathLike,
    json_path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    match: str | Callable[[str], str] = "name",
    sample_rate: int | None = None,
    allow_unpaired: bool = False,
    extensions=AUDIO_EXTENSIONS,
    progress: bool = False,
) -> dict:
    """Write a manifest for a folder of noisy files and a folder of same-named clean files.

    Arguments
    ---------
    noisy_dir, clean_dir : path
        Folders (searched recursively) of noisy and clean audio.
    json_path : path
        Output manifest (written atomically).
    data_root : path, optional
        Paths under it are stored as ``{data_root}/...``; default: the common parent of the
        two folders.
    match : "name", "fileid" or callable
        How files are paired (see :func:`pair_key`).
    sample_rate : int, optional
        If given, every file must have this rate (else an error names the file). A noisy file and
        its clean partner must have the same rate in any case.
    allow_unpaired : bool
        Skip (with a warning) files without a partner instead of failing.
    progress : bool
        Show a progress bar over the pairs (their headers are read).

    Returns
    -------
    dict
        The manifest that was written (with placeholders).

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> from sb_mal.audio import write_audio
    >>> d = tempfile.mkdtemp()
    >>> for sub in ("noisy", "clean"):
    ...     write_audio(os.path.join(d, sub, "u1.wav"), np.zeros(1600), 16000)
    >>> m = prepare_pairs(os.path.join(d, "noisy"), os.path.join(d, "clean"), os.path.join(d, "m.json"))
    >>> m["u1"]["noisy_wav"], m["u1"]["length"]
    ('{data_root}/noisy/u1.wav', 0.1)
    """
    noisy_dir, clean_dir = os.fspath(noisy_dir), os.fspath(clean_dir)
    if data_root is None:
        data_root = os.path.commonpath([os.path.abspath(noisy_dir), os.path.abspath(clean_dir)])
    noisy, noisy_amb = keyed_files(noisy_dir, match, extensions)
    clean, clean_amb = keyed_files(clean_dir, match, extensions)
    for kind, amb in (("noisy", noisy_amb), ("clean", clean_amb)):
        if amb:
            key, files = next(iter(sorted(amb.items())))
            raise ValueError(f"{files[0]}: {len(files)} {kind} files share the pairing key {key!r} "
                             f"({', '.join(files)}); which one is meant cannot be told")
    missing_clean = sorted(set(noisy) - set(clean))
    missing_noisy = sorted(set(clean) - set(noisy))
    if (missing_clean or missing_noisy) and not allow_unpaired:
        parts = []
        if missing_clean:
            parts.append(f"{len(missing_clean)} noisy file(s) without clean partner, e.g. {noisy[missing_clean[0]]}")
        if missing_noisy:
            parts.append(f"{len(missing_noisy)} clean file(s) without noisy partner, e.g. {clean[missing_noisy[0]]}")
        raise ValueError(f"unpaired files in {noisy_dir} / {clean_dir}: " + "; ".join(parts))
    for k in missing_clean + missing_noisy:
        logger.warning("prepare_pairs: skipping unpaired file %s", noisy.get(k) or clean.get(k))
    from tqdm import tqdm

    entries = {}
    for key in tqdm(sorted(set(noisy) & set(clean)), desc="pairs", unit="pair", disable=not progress):
        n_info, c_info = audio_info(noisy[key]), audio_info(clean[key])
        for info in (n_info, c_info):
            if sample_rate is not None and info.sample_rate != sample_rate:
                raise AudioError(f"{info.path}: sample rate is {info.sample_rate} Hz, expected {sample_rate} Hz")
        if n_info.sample_rate != c_info.sample_rate:
            raise AudioError(f"{noisy[key]}: sample rate {n_info.sample_rate} Hz differs from its clean file "
                             f"{clean[key]} ({c_info.sample_rate} Hz)")
        if abs(n_info.duration - c_info.duration) > 0.01:
            raise AudioError(
                f"{noisy[key]}: duration {n_info.duration:.3f} s differs from its clean file "
                f"{clean[key]} ({c_info.duration:.3f} s)"
            )
        uid = key.replace("/", "__")
        entries[uid] = {
            "noisy_wav": to_placeholder(noisy[key], data_root),
            "clean_wav": to_placeholder(clean[key], data_root),
            "length": round(c_info.duration, 6),
        }
    if not entries:
        raise ValueError(f"no pairs found in {noisy_dir} / {clean_dir}")
    write_manifest(json_path, entries)
    logger.info("prepare_pairs: %d pairs -> %s", len(entries), json_path)
    return entries
