"""Offline synthetic speech: eSpeak NG through ctypes, and a seeded sentence grammar.

The eSpeak NG library and its data come from the ``espeakng-loader`` wheel, so nothing is
downloaded. eSpeak NG keeps global state between utterances (a pitch-flutter index, the
harmonic-table switch, the roughness cycle counter), so the same text would not give the same
samples twice in one process. :func:`synthesize` therefore loads a private copy of the library
for every utterance and unloads it afterwards (about 5 ms), which makes the output a pure
function of text, voice and parameters. Calls are serialised with a lock (the library is
process-global).

Voices are ``"<language>"`` or ``"<language>+<variant>"`` (e.g. ``"en-us+m3"``, ``"de+f2"``).
Non-English voices read English text with their own letter-to-sound rules: accented, but
speech-like, which is all the mini corpus needs.

Example
-------
>>> wav = synthesize("Seven green ships.", "en-us+m3", rate=180)
>>> wav.dtype.name, 0.5 < len(wav) / 16000 < 3.0
('float32', True)
>>> bool(np.array_equal(wav, synthesize("Seven green ships.", "en-us+m3", rate=180)))
True
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from sb_mal.audio import resample

logger = logging.getLogger(__name__)

__all__ = [
    "ESPEAK_SAMPLE_RATE",
    "espeak_version",
    "load_word_lists",
    "make_sentence",
    "sentence_bucket",
    "synthesize",
    "trim_silence",
]

#: Rate of eSpeak NG's output in Hz (16-bit mono).
ESPEAK_SAMPLE_RATE = 22050

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_EE_NOT_FOUND = 2
_BUFFER_MS = 1000  # audio handed to the callback in chunks of up to 1 s (fewer Python calls)

_LOCK = threading.Lock()
_CHUNKS: list[np.ndarray] = []
_PRIVATE_LIB: dict[int, str] = {}

_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _on_audio(wav, num_samples, events) -> int:
    if num_samples > 0 and wav:
        _CHUNKS.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0  # 0: continue synthesis


_CALLBACK = _CALLBACK_TYPE(_on_audio)


def _loader():
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - a hard dependency in setup.cfg
        raise ImportError(
            "synthetic speech needs the 'espeakng-loader' wheel: pip install espeakng-loader"
        ) from err
    return espeakng_loader


def _remove_private(folder: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


def _private_library() -> str:
    """This process's own copy of libespeak-ng, so that unloading it really resets its state
    even if other code in the process loaded the wheel's library (falls back to the wheel's
    file if a copy cannot be made or loaded, e.g. a ``noexec`` temporary folder)."""
    pid = os.getpid()
    if pid not in _PRIVATE_LIB:
        source = _loader().get_library_path()
        if not os.path.isfile(source):
            raise RuntimeError(f"{source}: eSpeak NG library from espeakng-loader not found")
        _PRIVATE_LIB[pid] = source
        try:
            folder = tempfile.mkdtemp(prefix="sb_mal_espeak_")
            atexit.register(_remove_private, folder, pid)
            path = shutil.copy(source, os.path.join(folder, "libespeak-ng-sb_mal.so"))
            _unload(ctypes.CDLL(path))
            _PRIVATE_LIB[pid] = path
        except OSError as err:
            logger.warning("using %s directly (no private copy: %s)", source, err)
    return _PRIVATE_LIB[pid]


def _declare(lib) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    uint, ptr = ctypes.c_uint, ctypes.c_void_p
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        uint,
        ctypes.c_int,
        uint,
        uint,
        ptr,
        ptr,
    ]
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p


def _unload(lib) -> None:
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary
    close(lib._handle)


def _run_espeak(job) -> np.ndarray | str:
    """Load the private library, run ``job(lib)`` and unload; returns what ``job`` returns."""
    data_path = _loader().get_data_path()
    with _LOCK:
        lib = ctypes.CDLL(_private_library())
        try:
            _declare(lib)
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, os.fsencode(data_path), _INITIALIZE_DONT_EXIT
            )
            if rate != ESPEAK_SAMPLE_RATE:
                raise RuntimeError(
                    f"eSpeak NG failed to initialise with data {data_path} "
                    f"(returned {rate}, expected {ESPEAK_SAMPLE_RATE})"
                )
            try:
                lib.espeak_SetSynthCallback(_CALLBACK)
                return job(lib)
            finally:
                lib.espeak_Terminate()
        finally:
            _unload(lib)


def espeak_version() -> str:
    """Version string of the bundled eSpeak NG library.

    Example
    -------
    >>> espeak_version().count(".") >= 1
    True
    """
    return _run_espeak(lambda lib: lib.espeak_Info(None).decode())


def _check_voice(voice: str) -> None:
    if not isinstance(voice, str) or not voice or voice.count("+") > 1:
        raise ValueError(f"voice must be 'language' or 'language+variant', got {voice!r}")
    if "+" in voice:
        variant = voice.split("+")[1]
        path = Path(_loader().get_data_path()) / "voices" / "!v" / variant
        if not path.is_file():
            raise ValueError(f"voice {voice!r}: eSpeak NG has no variant {variant!r} (no {path})")


def synthesize(
    text: str,
    voice: str = "en-us",
    *,
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    volume: int = 60,
    sample_rate: int = 16000,
) -> np.ndarray:
    """Speak ``text`` with eSpeak NG and return float32 mono samples at ``sample_rate``.

    The result depends only on the arguments (see the module docstring).

    Arguments
    ---------
    text : str
        What to say (UTF-8; punctuation shapes the intonation).
    voice : str
        ``"language"`` or ``"language+variant"``, e.g. ``"en-us"``, ``"en-gb-scotland+f2"``.
    rate : int
        Speaking rate in words per minute (80-450).
    pitch, pitch_range : int
        Base pitch and intonation range, 0-99 (50 is the voice's default).
    volume : int
        Amplitude, 0-200 (100 is eSpeak's default; 60 keeps loud voices from clipping).
    sample_rate : int
        Output rate; eSpeak's 22050 Hz output is resampled (polyphase filter).

    Example
    -------
    >>> x = synthesize("Hello.", "de+f2", pitch=70, sample_rate=22050)
    >>> 0.2 < len(x) / 22050 < 2.0 and float(np.abs(x).max()) > 0.05
    True
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    _check_voice(voice)
    for name, value, low, high in (
        ("rate", rate, 80, 450), ("pitch", pitch, 0, 99),
        ("pitch_range", pitch_range, 0, 99), ("volume", volume, 0, 200),
    ):  # fmt: skip
        if not low <= int(value) <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    data = text.encode("utf-8")

    def job(lib) -> np.ndarray:
        _CHUNKS.clear()
        status = lib.espeak_SetVoiceByName(voice.encode("utf-8"))
        if status != 0:
            what = "unknown voice" if status == _EE_NOT_FOUND else f"error {status}"
            raise ValueError(f"eSpeak NG cannot use voice {voice!r} ({what})")
        for key, value in (
            ("rate", rate),
            ("pitch", pitch),
            ("range", pitch_range),
            ("volume", volume),
        ):
            lib.espeak_SetParameter(_PARAM[key], int(value), 0)
        lib.espeak_ng_SetRandSeed(1)
        status = lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"eSpeak NG failed to synthesise {text!r} (error {status})")
        lib.espeak_Synchronize()
        out = np.concatenate(_CHUNKS) if _CHUNKS else np.zeros(0, np.int16)
        _CHUNKS.clear()
        return out

    pcm = _run_espeak(job)
    if pcm.size == 0:
        raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}")
    wav = pcm.astype(np.float32) / 32768.0
    return resample(wav, ESPEAK_SAMPLE_RATE, int(sample_rate)).astype(np.float32)


def trim_silence(wav: np.ndarray, threshold_db: float = -50.0) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold_db`` below the peak.

    Example
    -------
    >>> trim_silence(np.array([0.0, 0.0, 0.5, -1.0, 0.2, 0.0])).tolist()
    [0.5, -1.0, 0.2]
    """
    wav = np.asarray(wav)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak == 0.0:
        return wav[:0]
    loud = np.nonzero(np.abs(wav) >= peak * 10.0 ** (threshold_db / 20.0))[0]
    return wav[loud[0] : loud[-1] + 1]


# --------------------------------------------------------------------------- sentence grammar

_WORDS_FILE = Path(__file__).resolve().parent / "texts" / "mini_words.txt"


@functools.cache
def load_word_lists(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """Read the ``[section]``-headed word lists of the grammar (default: the packaged file).

    Example
    -------
    >>> words = load_word_lists()
    >>> len(words["names"]) >= 40 and "carry|carried" in words["transitive"]
    True
    """
    path = os.fspath(path) if path is not None else str(_WORDS_FILE)
    sections: dict[str, list[str]] = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1].strip(), [])
            elif current is None:
                raise ValueError(f"{path}:{number}: entry {line!r} before any [section] header")
            elif line not in current:
                current.append(line)
    needed = ("names", "roles", "adjectives", "nouns", "transitive", "intransitive", "adverbs",
              "places", "times", "numbers", "ordinals", "months", "weekdays", "clock")  # fmt: skip
    missing = [s for s in needed if not sections.get(s)]
    if missing:
        raise ValueError(f"{path}: missing or empty section(s) {missing}")
    return {k: tuple(v) for k, v in sections.items()}


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def make_sentence(rng: np.random.Generator, words: dict | None = None) -> str:
    """Draw one English-like sentence from a small template grammar.

    Sentences mix subjects, verbs, objects, places, times, numbers, dates and questions; the
    combinations run into the billions, so seeded draws rarely repeat.

    Example
    -------
    >>> s = make_sentence(np.random.default_rng(0))
    >>> s[0].isupper() and s[-1] in ".?"
    True
    """
    w = load_word_lists() if words is None else words

    def pick(section: str) -> str:
        items = w[section]
        return items[int(rng.integers(len(items)))]

    def noun(plural: bool = False) -> str:
        parts = pick("nouns").split("|")
        return (parts[1] if len(parts) > 1 else parts[0] + "s") if plural else parts[0]

    def verb(section: str, past: bool = True) -> str:
        base, _, past_form = pick(section).partition("|")
        return (past_form or base + "ed") if past else base

    def subject() -> str:
        u = rng.random()
        if u < 0.55:
            return pick("names")
        if u < 0.9:
            return "the " + pick("roles")
        return str(rng.choice(["she", "he", "they", "we"]))

    def number() -> str:
        n = int(rng.integers(2, 21))
        return w["numbers"][n] if rng.random() < 0.7 else str(n)

    adj, place, time = pick("adjectives"), pick("places"), pick("times")
    template = int(rng.integers(12))
    if template == 0:
        s = f"{subject()} {verb('transitive')} the {adj} {noun()} {place}."
    elif template == 1:
        s = f"{subject()} {verb('transitive')} {number()} {adj} {noun(True)} {time}."
    elif template == 2:
        s = f"the {pick('roles')} {verb('intransitive')} {pick('adverbs')} {place}."
    elif template == 3:
        did, also = verb("transitive"), verb("transitive")
        s = f"{time}, {subject()} {did} the {noun()} and {also} the {noun()}."
    elif template == 4:
        s = f"did {subject()} {verb('transitive', False)} the {adj} {noun()} {time}?"
    elif template == 5:
        date = f"the {pick('ordinals')} of {pick('months')}"
        s = f"on {date}, {subject()} {verb('intransitive')} {place}."
    elif template == 6:
        clock = pick("clock").format(h=w["numbers"][int(rng.integers(1, 13))])
        s = f"please {verb('transitive', False)} the {adj} {noun()} before {clock}."
    elif template == 7:
        s = f"{subject()} said the {noun()} {place} was {adj}."
    elif template == 8:
        s = f"we need {number()} {noun(True)} and {number()} {noun(True)} by {pick('weekdays')}."
    elif template == 9:
        year = int(rng.integers(1950, 2031))
        s = f"in {year}, {subject()} {verb('transitive')} {_article(adj)} {adj} {noun()} {place}."
    elif template == 10:
        s = f"why did {subject()} {verb('intransitive', False)} {pick('adverbs')} {place}?"
    else:
        how = f"{verb('intransitive')} {pick('adverbs')}"
        s = f"{subject()} {how}, then {verb('transitive')} the {noun()}."
    return s[0].upper() + s[1:]


def sentence_bucket(sentence: str, buckets: int = 100) -> int:
    """Stable bucket ``0..buckets-1`` of a sentence (case and spacing ignored).

    The mini corpus gives each split its own buckets, so no sentence can occur in two splits.

    Example
    -------
    >>> sentence_bucket("Hello  world.") == sentence_bucket("hello world.")
    True
    """
    key = " ".join(sentence.lower().split()).encode("utf-8")
    return int.from_bytes(hashlib.sha1(key).digest()[:4], "big") % buckets
