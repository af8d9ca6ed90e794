"""The embedded synthetic mini corpus: noisy/clean pairs built offline in seconds.

Clean speech is eSpeak NG (:mod:`sb_mal.data.synth_speech`) reading sentences from a seeded
grammar; noise is synthetic (:mod:`sb_mal.data.synth_noise`): white, pink, brown, band-pass,
mains hum, babble, transients and combinations. Everything is a function of the parameters
and the seed, so two builds with the same arguments give identical files.

Splits:

* sentences: each sentence hashes to one of 100 buckets; train draws from buckets 0-69,
  valid from 70-77, test from 78-85 and babble talkers from 86-99, so no sentence is in two
  splits (and no babble talker says a target sentence);
* voices: train and valid use :data:`TRAIN_LANGUAGES` x :data:`TRAIN_VARIANTS`; test uses the
  held-out variants :data:`TEST_VARIANTS` (with train or :data:`TEST_LANGUAGES` languages), so
  every test voice is unseen in training; babble talkers use :data:`BABBLE_LANGUAGES`;
* SNR: uniform in ``train_snr_range`` for train, the grid ``eval_snrs`` (balanced) for valid
  and test; noise kinds are balanced in every split.

Layout::

    out_dir/corpus_info.json                 parameters + version, written last
    out_dir/{train,valid,test}.json          SpeechBrain manifests ({data_root} = out_dir)
    out_dir/{train,valid,test}/{noisy,clean}/<split>_<nnnn>.wav   16 kHz 16-bit mono

Example
-------
>>> import tempfile
>>> from sb_mal.data.manifest import load_manifest
>>> with tempfile.TemporaryDirectory() as tmp:
...     paths = build_mini_corpus(tmp, n_train=2, n_valid=1, n_test=1, progress=False)
...     manifest = load_manifest(paths["test"], tmp)
>>> sorted(paths), sorted(manifest)
(['test', 'train', 'valid'], ['test_0000'])
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from sb_mal.audio import write_audio
from sb_mal.data.manifest import to_placeholder, write_manifest
from sb_mal.data.mixing import active_speech_power, mix_at_snr
from sb_mal.data.synth_noise import NOISE_TYPES, make_noise
from sb_mal.data.synth_speech import make_sentence, sentence_bucket, synthesize, trim_silence
from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "BABBLE_LANGUAGES",
    "CORPUS_VERSION",
    "TEST_LANGUAGES",
    "TEST_VARIANTS",
    "TRAIN_LANGUAGES",
    "TRAIN_VARIANTS",
    "build_mini_corpus",
    "default_mini_dir",
    "mini_dataset",
]

#: Bumped whenever the same parameters would give different audio.
CORPUS_VERSION = 1
SPLITS = ("train", "valid", "test")
#: Languages whose voices read the train/valid (and part of the test) sentences.
TRAIN_LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan",
                   "de", "nl")  # fmt: skip
#: Extra languages for test voices only.
TEST_LANGUAGES = ("en-us-nyc", "en-gb-x-gbcwmd", "af")
#: Voice variants (timbre, pitch) of train and valid.
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "klatt", "klatt2", "Andy",
                  "adam", "max", "paul", "linda", "travis")  # fmt: skip
#: Held-out variants: every test utterance uses one of these.
TEST_VARIANTS = ("m7", "f4", "f5", "klatt3", "steph", "edward")
#: Languages of the babble talkers (any variant).
BABBLE_LANGUAGES = ("fr", "es", "it", "pt", "pl", "sv")

_BUCKETS = {"train": (0, 70), "valid": (70, 78), "test": (78, 86), "babble": (86, 100)}
_CODE = {"train": 1, "valid": 2, "test": 3}
_INFO = "corpus_info.json"
_MARKER = ".mini_building.json"
_CANDIDATES = 8
_BABBLE_CLIPS = {"train": 24, "valid": 10, "test": 10}

_TALKERS: dict[str, list[np.ndarray]] = {}  # babble clips of the current split, per process


def default_mini_dir() -> Path:
    """Where ``sb-mal demo`` keeps the mini corpus: ``$SB_MAL_CACHE/mini``, else
    ``$XDG_CACHE_HOME/sb_mal/mini``, else ``~/.cache/sb_mal/mini``.

    Example
    -------
    >>> default_mini_dir().name
    'mini'
    """
    if os.environ.get("SB_MAL_CACHE"):
        return Path(os.environ["SB_MAL_CACHE"]).expanduser() / "mini"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "sb_mal" / "mini"


def _sentences(rng: np.random.Generator, split: str, used: set[str], count: int) -> list[str]:
    low, high = _BUCKETS[split]
    out: list[str] = []
    while len(out) < count:
        sentence = make_sentence(rng)
        if low <= sentence_bucket(sentence) < high and sentence not in used:
            used.add(sentence)
            out.append(sentence)
    return out


def _voice_params(rng: np.random.Generator) -> dict:
    return {
        "rate": int(rng.integers(140, 201)),
        "pitch": int(rng.integers(30, 71)),
        "pitch_range": int(rng.integers(20, 81)),
    }


def _pick(rng: np.random.Generator, items) -> str:
    return str(items[int(rng.integers(len(items)))])


def _plan(split: str, n: int, p: dict) -> tuple[list[dict], list[dict]]:
    """Utterance and babble-clip recipes of one split (cheap: no audio)."""
    rng = np.random.default_rng([p["seed"], _CODE[split], 0])
    used: set[str] = set()
    babble_used: set[str] = set()
    clips = []
    for _ in range(_BABBLE_CLIPS[split]):
        voice = _pick(rng, BABBLE_LANGUAGES) + "+" + _pick(rng, TRAIN_VARIANTS + TEST_VARIANTS)
        text = _sentences(rng, "babble", babble_used, 1)[0]
        clips.append(
            {"voice": voice, "text": text, "sample_rate": p["sample_rate"], **_voice_params(rng)}
        )
    kinds = [p["noise_types"][i % len(p["noise_types"])] for i in range(n)]
    rng.shuffle(kinds)
    if split == "train":
        snrs = [round(float(s), 2) for s in rng.uniform(*p["train_snr_range"], size=n)]
    else:
        snrs = [float(p["eval_snrs"][i % len(p["eval_snrs"])]) for i in range(n)]
        rng.shuffle(snrs)
    plans = []
    for i in range(n):
        if split == "test":
            language = _pick(rng, TRAIN_LANGUAGES + TEST_LANGUAGES)
            variant = _pick(rng, TEST_VARIANTS)
        else:
            language, variant = _pick(rng, TRAIN_LANGUAGES), _pick(rng, TRAIN_VARIANTS)
        plans.append({
            "uid": f"{split}_{i:04d}", "split": split, "index": i, "seed": p["seed"],
            "voice": f"{language}+{variant}", **_voice_params(rng),
            "candidates": _sentences(rng, split, used, _CANDIDATES),
            "noise_type": kinds[i], "snr_db": snrs[i],
            "level_db": round(float(rng.uniform(-32, -22)), 2),
            "sample_rate": p["sample_rate"], "min_seconds": p["min_seconds"],
            "max_seconds": p["max_seconds"],
        })  # fmt: skip
    return plans, clips


def _speak(plan: dict, text: str) -> np.ndarray:
    wav = synthesize(text, plan["voice"], rate=plan["rate"], pitch=plan["pitch"],
                     pitch_range=plan["pitch_range"], sample_rate=plan["sample_rate"])  # fmt: skip
    return trim_silence(wav)


def _talkers(split: str, clips: list[dict]) -> list[np.ndarray]:
    """The split's babble talker clips, synthesised once per process and cached."""
    key = json.dumps([split, clips], sort_keys=True)
    if key not in _TALKERS:
        _TALKERS.clear()  # one corpus at a time
        _TALKERS[key] = [_speak(clip, clip["text"]) for clip in clips]
    return _TALKERS[key]


def _fit_speech(plan: dict) -> tuple[np.ndarray, str]:
    """Speak candidates until one (or two joined) fits the length limits; crop as last resort."""
    sr = plan["sample_rate"]
    shortest = int((plan["min_seconds"] - 0.8) * sr)
    longest = int((plan["max_seconds"] - 0.2) * sr)
    # Try first the sentences whose length in characters suits the target duration
    # (eSpeak says roughly six characters per "word" of its words-per-minute rate).
    chars_per_sample = plan["rate"] * 6.0 / 60.0 / sr
    fits = [
        shortest * 1.1 <= len(c) / chars_per_sample <= longest * 0.9 for c in plan["candidates"]
    ]
    candidates = [c for c, ok in zip(plan["candidates"], fits) if ok]
    candidates += [c for c, ok in zip(plan["candidates"], fits) if not ok]
    wav, text = np.zeros(0, np.float32), ""
    while candidates:
        text = candidates.pop(0)
        wav = _speak(plan, text)
        while len(wav) < shortest and candidates:
            text = f"{text} {candidates.pop(0)}"
            wav = _speak(plan, text)
        if shortest <= len(wav) <= longest or (len(wav) < shortest and not candidates):
            return wav, text
    logger.debug("%s: no candidate fits %.1f s; cropping", plan["uid"], plan["max_seconds"])
    wav = wav[:longest].copy()
    fade = min(len(wav), int(0.05 * sr))
    wav[len(wav) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return wav, text


def _make_utterance(job: tuple[dict, list[dict], str]) -> tuple[str, dict]:
    """Synthesise, pad, level, add noise and write one pair; returns (uid, manifest entry)."""
    plan, clips, out_dir = job
    sr, split, uid = plan["sample_rate"], plan["split"], plan["uid"]
    rng = np.random.default_rng([plan["seed"], _CODE[split], plan["index"] + 1])
    speech, text = _fit_speech(plan)
    min_n, max_n = round(plan["min_seconds"] * sr), round(plan["max_seconds"] * sr)
    room = max(0, max_n - len(speech))
    pad = min(room, max(int(rng.uniform(0.2, 0.6) * sr), min_n - len(speech)))
    lead = int(pad * rng.uniform(0.3, 0.7))
    clean = np.concatenate([np.zeros(lead), speech, np.zeros(pad - lead)])
    clean *= 10 ** (plan["level_db"] / 20) / np.sqrt(active_speech_power(clean, sr))
    talkers = _talkers(split, clips) if plan["noise_type"] in ("babble", "combo") else None
    noise, detail = make_noise(plan["noise_type"], len(clean), rng, sr, talkers)
    noisy, clean, _ = mix_at_snr(clean, noise, plan["snr_db"], sr)
    paths = {kind: os.path.join(out_dir, split, kind, f"{uid}.wav") for kind in ("noisy", "clean")}
    write_audio(paths["noisy"], noisy, sr)
    write_audio(paths["clean"], clean, sr)
    entry = {
        "noisy_wav": to_placeholder(paths["noisy"], out_dir),
        "clean_wav": to_placeholder(paths["clean"], out_dir),
        "length": len(clean) / sr, "snr_db": plan["snr_db"], "noise_type": plan["noise_type"],
        "noise_detail": detail, "voice": plan["voice"], "rate": plan["rate"],
        "pitch": plan["pitch"], "pitch_range": plan["pitch_range"], "text": text,
    }  # fmt: skip
    return uid, entry


def _run(func, jobs: list, pool: ProcessPoolExecutor | None, progress: bool, desc: str) -> list:
    from tqdm import tqdm

    results = pool.map(func, jobs, chunksize=8) if pool is not None else map(func, jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, disable=not progress, leave=False))


def _load_info(out: Path) -> dict | None:
    try:
        return json.loads((out / _INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _clear(out: Path, params: dict) -> None:
    """Remove a previous (or half-built) corpus; refuse to touch folders that are not ours."""
    ours = (out / _INFO).exists() or (out / _MARKER).exists()
    found = [name for name in (*SPLITS, *(f"{s}.json" for s in SPLITS)) if (out / name).exists()]
    if found and not ours:
        raise FileExistsError(
            f"{out}: holds {found} but no {_INFO}; it is not an sb_mal mini corpus, so it is not "
            "overwritten. Choose an empty or new folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / _MARKER, json.dumps(params, indent=2) + "\n")
    (out / _INFO).unlink(missing_ok=True)
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def build_mini_corpus(
    out_dir: str | os.PathLike | None = None,
    *,
    n_train: int = 600,
    n_valid: int = 60,
    n_test: int = 60,
    seed: int = 0,
    sample_rate: int = 16000,
    min_seconds: float = 2.0,
    max_seconds: float = 4.0,
    train_snr_range: tuple[float, float] = (-5.0, 15.0),
    eval_snrs: tuple[float, ...] = (-5.0, 0.0, 5.0, 10.0, 15.0),
    noise_types: tuple[str, ...] = NOISE_TYPES,
    num_workers: int = 1,
    progress: bool = True,
) -> dict[str, str]:
    """Build (or reuse) the synthetic mini corpus and return its manifest paths.

    If ``out_dir`` already holds a complete corpus built with the same parameters, nothing is
    rewritten. Otherwise the old corpus is removed and a new one built; ``corpus_info.json`` is
    written last, so an interrupted build never looks complete (it is rebuilt next time).

    Arguments
    ---------
    out_dir : path, optional
        Output folder (default :func:`default_mini_dir`).
    n_train, n_valid, n_test : int
        Utterances per split (each >= 1).
    seed : int
        Everything (sentences, voices, noises, SNRs) follows from it.
    sample_rate : int
        Rate of the written files.
    min_seconds, max_seconds : float
        Length range of every utterance (speech plus short silences).
    train_snr_range : (low, high)
        Train SNRs in dB, drawn uniformly.
    eval_snrs : tuple of float
        SNR grid in dB for valid and test, used equally often.
    noise_types : tuple of str
        Noise kinds to use (subset of :data:`sb_mal.data.synth_noise.NOISE_TYPES`), balanced.
    num_workers : int
        Processes to use (1: in this process). Results do not depend on it. Workers are
        started with ``spawn``, so a calling script needs the usual
        ``if __name__ == "__main__":`` guard.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path}`` of the JSON manifests.
    """
    out = Path(default_mini_dir() if out_dir is None else out_dir).expanduser().resolve()
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"n_{name} must be a positive integer, got {value!r}")
    if not 0.5 <= min_seconds < max_seconds <= 30:
        raise ValueError(
            f"need 0.5 <= min_seconds < max_seconds <= 30, got {min_seconds}, {max_seconds}"
        )
    if max_seconds - min_seconds < 1.0:
        raise ValueError(
            f"max_seconds - min_seconds must be >= 1 s, got {min_seconds}..{max_seconds}"
        )
    if not 8000 <= sample_rate <= 48000:
        raise ValueError(f"sample_rate must be in [8000, 48000] Hz, got {sample_rate}")
    bad = [k for k in noise_types if k not in NOISE_TYPES]
    if bad or not noise_types:
        raise ValueError(
            f"noise_types must be a non-empty subset of {NOISE_TYPES}, got {noise_types!r}"
        )
    low, high = train_snr_range
    if not low <= high or not eval_snrs:
        raise ValueError(
            f"bad SNR settings: train_snr_range={train_snr_range}, eval_snrs={eval_snrs}"
        )
    params = {
        "n_train": int(n_train), "n_valid": int(n_valid), "n_test": int(n_test), "seed": int(seed),
        "sample_rate": int(sample_rate), "min_seconds": float(min_seconds),
        "max_seconds": float(max_seconds), "train_snr_range": [float(low), float(high)],
        "eval_snrs": [float(s) for s in eval_snrs], "noise_types": list(noise_types),
    }  # fmt: skip
    manifests = {split: str(out / f"{split}.json") for split in SPLITS}
    info = _load_info(out)
    if (
        info is not None
        and info.get("version") == CORPUS_VERSION
        and info.get("params") == params
        and all(os.path.isfile(path) for path in manifests.values())
    ):
        logger.info("mini corpus in %s is up to date", out)
        return manifests

    logger.info("building the synthetic mini corpus in %s (%s)", out, counts)
    _clear(out, params)
    plans = {split: _plan(split, counts[split], params) for split in SPLITS}
    jobs = [(plan, clips, str(out)) for split in SPLITS for plan in plans[split][0]
            for clips in [plans[split][1]]]  # fmt: skip
    if num_workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            entries = dict(_run(_make_utterance, jobs, pool, progress, "mini corpus"))
    else:
        try:
            entries = dict(_run(_make_utterance, jobs, None, progress, "mini corpus"))
        finally:
            _TALKERS.clear()
    for split in SPLITS:
        write_manifest(
            manifests[split], {k: v for k, v in entries.items() if k.startswith(split + "_")}
        )
    seconds = sum(e["length"] for e in entries.values())
    summary = {"version": CORPUS_VERSION, "params": params, "utterances": len(entries),
               "minutes": round(seconds / 60, 2)}  # fmt: skip
    atomic_write_text(out / _INFO, json.dumps(summary, indent=2) + "\n")
    (out / _MARKER).unlink(missing_ok=True)
    logger.info("mini corpus ready: %d utterances, %.1f min in %s", len(entries), seconds / 60, out)
    return manifests


def mini_dataset(split: str, corpus_dir: str | os.PathLike | None = None, **kwargs):
    """A split of the mini corpus as a dataset (see :func:`sb_mal.data.datasets.manifest_dataset`).

    ``corpus_dir`` defaults to :func:`default_mini_dir` (the corpus must have been built, e.g. by
    the recipe's ``prepare`` step); keyword arguments go to ``manifest_dataset``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    from sb_mal.data.datasets import manifest_dataset

    root = Path(corpus_dir) if corpus_dir is not None else default_mini_dir()
    return manifest_dataset(root / f"{split}.json", root, **kwargs)
