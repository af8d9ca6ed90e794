"""Downstream ASR: transcribe (enhanced) audio with a SpeechBrain ASR model and score the word error rate.

Any SpeechBrain ASR interface with ``transcribe_batch(wavs, wav_lens) -> (words, tokens)`` works:
``EncoderDecoderASR`` (attention / transducer models, e.g. ``speechbrain/asr-crdnn-rnnlm-librispeech``),
``EncoderASR`` (CTC models, e.g. ``speechbrain/asr-wav2vec2-librispeech``) or ``WhisperASR``,
loaded by :func:`load_asr` from a hub id (network once, then the cache) or a local folder (never
the network). Reference transcripts are the ``words`` field of an sb_mal manifest (LibriSpeech and
VoiceBank preparations write it).

Which audio is transcribed (:func:`evaluate_asr`): the files of ``audio_folder`` named
``<utterance id>.wav`` (what :class:`~sb_mal.brains.EnhanceBrain` writes to ``enhanced_folder`` at
test time), or a manifest field (``noisy_wav`` for the unprocessed input, ``clean_wav`` for the
clean upper bound), optionally passed through an ``enhance`` callable first (``wav [B, T], lens ->
wav [B, T]``, e.g. ``Enhancer.enhance_batch``).

WER = (substitutions + deletions + insertions) / reference words, in percent, over the whole set
(SpeechBrain's :mod:`~speechbrain.utils.edit_distance`, Kaldi's ``compute-wer`` counts).
Transcripts are compared after :func:`normalize_words` (upper case, punctuation except
apostrophes removed), so a model's casing does not count as errors.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ASR_INTERFACES", "WERResult", "evaluate_asr", "load_asr", "normalize_words", "transcribe",
           "word_error_rate"]

#: interface name -> class name in ``speechbrain.inference.ASR``
ASR_INTERFACES = {"encoder_decoder": "EncoderDecoderASR", "encoder": "EncoderASR", "whisper": "WhisperASR"}

_PUNCT = re.compile(r"[^\w\s']")


def normalize_words(text: str | Sequence[str]) -> list[str]:
    """Upper-case words with punctuation (except apostrophes) removed.

    Example
    -------
    >>> normalize_words("The cat's hat, sat!  on-the mat.")
    ['THE', "CAT'S", 'HAT', 'SAT', 'ON', 'THE', 'MAT']
    """
    if not isinstance(text, str):
        text = " ".join(str(t) for t in text)
    return _PUNCT.sub(" ", text.upper()).split()


@dataclass
class WERResult:
    """Word error rate of a set of utterances (``wer`` in percent) and per-utterance rows."""

    wer: float
    errors: int
    words: int
    insertions: int
    deletions: int
    substitutions: int
    sentences: int
    sentence_errors: int
    rows: list[dict] = field(default_factory=list)

    @property
    def ser(self) -> float:
        """Sentence error rate in percent."""
        return 100.0 * self.sentence_errors / self.sentences if self.sentences else float("nan")

    def summary(self) -> dict:
        """The totals as a dict (no rows)."""
        keys = ("wer", "errors", "words", "insertions", "deletions", "substitutions", "sentences", "sentence_errors")
        return {**{k: getattr(self, k) for k in keys}, "ser": self.ser}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the summary and the rows as JSON (atomically)."""
        atomic_write_text(path, json.dumps({**self.summary(), "utterances": self.rows}, indent=2) + "\n")

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write one row per utterance (id, errors, words, wer, reference, hypothesis) as CSV (atomically)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["id", "errors", "words", "wer", "insertions", "deletions",
                                                    "substitutions", "reference", "hypothesis"])
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(path, buffer.getvalue())


def word_error_rate(references: Mapping[str, str] | Sequence[str], hypotheses: Mapping[str, str] | Sequence[str],
                    normalize: bool = True) -> WERResult:
    """WER of ``hypotheses`` against ``references`` (both dicts keyed by utterance id, or equal-length lists).

    Example
    -------
    >>> result = word_error_rate(["the cat sat", "a dog"], ["the cat sat down", "a frog"])
    >>> round(result.wer, 2), result.insertions, result.substitutions, result.words
    (40.0, 1, 1, 5)
    """
    from speechbrain.utils.edit_distance import wer_details_by_utterance, wer_summary

    if not isinstance(references, Mapping):
        references = {f"utt{i:06d}": r for i, r in enumerate(references)}
        if isinstance(hypotheses, Mapping):
            raise TypeError("references is a list but hypotheses a dict: give both as dicts or both as lists")
        hypotheses = list(hypotheses)
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
        hypotheses = dict(zip(references, hypotheses))
    missing = [k for k in references if k not in hypotheses]
    if missing:
        raise KeyError(f"no hypothesis for {len(missing)} utterance(s), e.g. {missing[0]!r}")
    split = normalize_words if normalize else (lambda t: t.split() if isinstance(t, str) else list(t))
    ref_tokens = {k: split(v) for k, v in references.items()}
    hyp_tokens = {k: split(hypotheses[k]) for k in references}
    details = wer_details_by_utterance(ref_tokens, hyp_tokens, scoring_mode="strict")
    totals = wer_summary(details)
    rows = [{"id": d["key"], "errors": d["num_edits"], "words": d["num_ref_tokens"],
             "wer": 100.0 * d["num_edits"] / d["num_ref_tokens"] if d["num_ref_tokens"] else float("nan"),
             "insertions": d["insertions"], "deletions": d["deletions"], "substitutions": d["substitutions"],
             "reference": " ".join(ref_tokens[d["key"]]), "hypothesis": " ".join(hyp_tokens[d["key"]])}
            for d in details]
    words = int(totals["num_scored_tokens"])
    errors = int(totals["num_edits"])
    return WERResult(wer=100.0 * errors / words if words else float("nan"), errors=errors, words=words,
                     insertions=int(totals["insertions"]), deletions=int(totals["deletions"]),
                     substitutions=int(totals["substitutions"]), sentences=int(totals["num_scored_sents"]),
                     sentence_errors=int(totals["num_erroneous_sents"]), rows=rows)


def _interface(source, interface: str):
    import speechbrain.inference.ASR as asr_module

    if isinstance(interface, type):
        return interface
    if interface == "auto":
        interface = _detect_interface(source)
    if interface not in ASR_INTERFACES:
        raise ValueError(f"interface must be 'auto', one of {sorted(ASR_INTERFACES)} or a Pretrained subclass, "
                         f"got {interface!r}")
    return getattr(asr_module, ASR_INTERFACES[interface])


def _detect_interface(source) -> str:
    """Guess the interface from the hyperparams.yaml of a local folder (hub ids: encoder_decoder)."""
    path = Path(os.fspath(source)) / "hyperparams.yaml"
    if not path.is_file():
        logger.info("ASR source %s is not a local folder: assuming interface 'encoder_decoder' (EncoderDecoderASR); "
                    "pass interface='encoder' for a CTC model", source)
        return "encoder_decoder"
    text = path.read_text(encoding="utf-8")
    if re.search(r"^decoding_function\s*:", text, re.M):
        return "encoder"
    if re.search(r"^whisper\s*:", text, re.M):
        return "whisper"
    return "encoder_decoder"


def load_asr(source: str | os.PathLike, interface: str | type = "auto", *, savedir: str | os.PathLike | None = None,
             device: str = "cpu", **kwargs):
    """Load a SpeechBrain ASR model from a hub id or a local folder.

    Arguments
    ---------
    source : str or path
        Hub id (e.g. ``speechbrain/asr-crdnn-rnnlm-librispeech``) or a folder with ``hyperparams.yaml``.
    interface : str or type
        ``"encoder_decoder"``, ``"encoder"``, ``"whisper"``, a ``Pretrained`` subclass, or ``"auto"``:
        from a local folder's ``hyperparams.yaml`` (a top-level ``decoding_function`` means a CTC
        ``EncoderASR``); ``EncoderDecoderASR`` for hub ids.
    savedir : path, optional
        Where hub files are stored (default: SpeechBrain's cache).
    device : str
        ``"cpu"``, ``"cuda:0"``...
    kwargs
        Passed to ``from_hparams``.

    Example
    -------
    >>> load_asr("/no/such/asr/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: ASR source '/no/such/asr/folder': no such folder (expected a folder with ...)
    """
    from speechbrain.utils.fetching import FetchConfig

    local = os.path.isdir(os.fspath(source))
    if not local and (str(source).startswith((".", "/", "~")) or str(source).count("/") > 1):
        raise FileNotFoundError(f"ASR source {str(source)!r}: no such folder (expected a folder with hyperparams.yaml "
                                "or a hub id like speechbrain/asr-crdnn-rnnlm-librispeech)")
    if local:
        if not (Path(os.fspath(source)) / "hyperparams.yaml").is_file():
            raise FileNotFoundError(f"{source}: no hyperparams.yaml in this ASR model folder")
        kwargs.setdefault("fetch_config", FetchConfig(allow_network=False))
    cls = _interface(source, interface)
    run_opts = dict(kwargs.pop("run_opts", {}) or {}, device=device)
    return cls.from_hparams(source=os.fspath(source) if local else str(source), savedir=savedir, run_opts=run_opts,
                            **kwargs)


def _asr_rate(asr) -> int:
    rate = getattr(getattr(asr, "hparams", None), "sample_rate", None)
    if rate is None:
        rate = getattr(getattr(asr, "audio_normalizer", None), "sample_rate", None)
    return int(rate or 16000)


def _pad(wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(w) for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return batch, torch.tensor([len(w) / longest for w in wavs])


def transcribe(asr, wavs: Sequence, batch_size: int = 8, enhance: Callable | None = None) -> list[str]:
    """Transcripts of ``wavs`` (1-D arrays/tensors at the ASR's rate), batched by similar length.

    ``enhance`` (optional) maps a padded batch ``[B, T]`` and relative lengths to enhanced
    ``[B, T]`` before transcription. Token lists returned by the model are joined with spaces.

    Example
    -------
    >>> class Counter:  # stands in for a SpeechBrain ASR model
    ...     def transcribe_batch(self, wavs, wav_lens):
    ...         return [f"{int(round(float(r) * wavs.shape[1]))} SAMPLES" for r in wav_lens], None
    >>> transcribe(Counter(), [np.zeros(300), np.zeros(100), np.zeros(200)], batch_size=2)
    ['300 SAMPLES', '100 SAMPLES', '200 SAMPLES']
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tensors = [torch.as_tensor(np.asarray(w), dtype=torch.float32).reshape(-1) for w in wavs]
    order = sorted(range(len(tensors)), key=lambda i: len(tensors[i]))
    out: list[str | None] = [None] * len(tensors)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch, lens = _pad([tensors[i] for i in chosen])
        if enhance is not None:
            with torch.no_grad():
                batch = enhance(batch, lens)
            batch = batch.detach().float().cpu()
        words, _ = asr.transcribe_batch(batch, lens)
        for i, text in zip(chosen, words):
            out[i] = text if isinstance(text, str) else " ".join(str(t) for t in text)
    return out  # type: ignore[return-value]


def evaluate_asr(asr, manifest: str | os.PathLike | Mapping, *, data_root: str | os.PathLike | None = None,
                 audio_folder: str | os.PathLike | None = None, audio_key: str = "noisy_wav",
                 enhance: Callable | None = None, batch_size: int = 8, limit: int | None = None,
                 output_folder: str | os.PathLike | None = None, name: str = "asr") -> WERResult:
    """WER of an ASR model on the utterances of a manifest (see the module docstring).

    Arguments
    ---------
    asr : Pretrained ASR interface
        From :func:`load_asr`, or anything with SpeechBrain's ``transcribe_batch``.
    manifest : path or dict
        An sb_mal manifest; every entry used needs a ``words`` field.
    data_root : path, optional
        Value of ``{data_root}`` in the manifest paths (default: the manifest's folder).
    audio_folder : path, optional
        Transcribe ``<audio_folder>/<id>.wav`` (e.g. a run's ``enhanced_test``) instead of ``audio_key``.
    audio_key : str
        Manifest field of the audio to transcribe when no ``audio_folder`` is given.
    enhance : callable, optional
        Applied to each padded batch before transcription.
    limit : int, optional
        Only the first ``limit`` utterances (by id).
    output_folder : path, optional
        Write ``<name>_wer.json`` (summary and transcripts) and ``<name>_wer.csv`` there.

    Example
    -------
    >>> import tempfile
    >>> from sb_mal.audio import write_audio
    >>> class Parrot:  # stands in for a SpeechBrain ASR model
    ...     def transcribe_batch(self, wavs, wav_lens):
    ...         return ["hello world"] * len(wavs), None
    >>> path = os.path.join(tempfile.mkdtemp(), "u.wav")
    >>> write_audio(path, np.zeros(1600), 16000)
    >>> result = evaluate_asr(Parrot(), {"u": {"noisy_wav": path, "words": "HELLO THERE WORLD"}})
    >>> round(result.wer, 2), result.deletions  # 1 deletion / 3 words
    (33.33, 1)
    """
    from sb_mal.audio import read_audio
    from sb_mal.data.manifest import load_manifest

    if isinstance(manifest, Mapping):
        entries, where = dict(manifest), "the manifest given"
    else:
        where = os.fspath(manifest)
        root = data_root if data_root is not None else os.path.dirname(os.path.abspath(where))
        entries = load_manifest(where, root)
    ids = sorted(entries)
    if limit is not None:
        ids = ids[: int(limit)]
    if not ids:
        raise ValueError(f"{where}: no utterances to transcribe")
    lacking = [u for u in ids if not isinstance(entries[u].get("words"), str)]
    if lacking:
        raise ValueError(f"{where}: {len(lacking)} utterance(s) have no 'words' transcript, e.g. {lacking[0]!r}")
    rate = _asr_rate(asr)
    wavs = []
    for uid in ids:
        if audio_folder is not None:
            path = os.path.join(os.fspath(audio_folder), f"{uid}.wav")
        else:
            if audio_key not in entries[uid]:
                raise ValueError(f"{where}: entry {uid!r} has no {audio_key!r} field")
            path = entries[uid][audio_key]
        wavs.append(read_audio(path, rate)[0])
    hyps = transcribe(asr, wavs, batch_size=batch_size, enhance=enhance)
    result = word_error_rate({u: entries[u]["words"] for u in ids}, dict(zip(ids, hyps)))
    logger.info("ASR on %d utterances of %s: WER %.2f %% (%d errors / %d words)", len(ids), where, result.wer,
                result.errors, result.words)
    if output_folder is not None:
        result.to_json(os.path.join(os.fspath(output_folder), f"{name}_wer.json"))
        result.to_csv(os.path.join(os.fspath(output_folder), f"{name}_wer.csv"))
    return result
