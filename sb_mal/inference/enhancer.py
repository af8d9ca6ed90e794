"""``Enhancer``: a SpeechBrain ``Pretrained`` interface for sb_mal's enhancers and SpeechBrain's own.

Two folder layouts are recognised from the hyperparameters (:func:`sb_mal.model_folder.folder_layout`),
and each model is run the way its own interface runs it:

``waveform`` (sb_mal's exported folders, SpeechBrain's ``WaveformEnhancement`` folders)
    ``modules.enhance_model`` maps noisy ``[B, T]`` waveforms to enhanced ``[B, T]`` waveforms:
    ``enhance_model(wav, lengths)`` when its ``forward`` takes ``lengths``, else
    ``enhance_model(wav)``; a tuple output (SpeechBrain's ``EnhanceResnet`` returns
    ``(wav, features)``) gives its first element.
``spectral_mask`` (SpeechBrain's ``SpectralMaskEnhancement`` folders, e.g. MetricGAN+ from the hub:
    hparams ``compute_stft``, ``spectral_magnitude``, ``resynth``)
    features ``log1p(spectral_magnitude(compute_stft(wav)))``, mask ``enhance_model(features,
    lengths=lengths)`` (or without lengths when the model takes none), enhanced waveform
    ``resynth(expm1(mask * features), wav)``, as ``SpectralMaskEnhancement.enhance_batch`` does.

Long signals are enhanced in overlapping, cross-faded chunks (:mod:`sb_mal.inference.streaming`).
Signals no longer than one chunk are enhanced whole: the result is then exactly
``enhance_model(wav, lengths)``. For a model with long context (the bidirectional GRU of
:class:`~sb_mal.models.SpectralUNetSE`), chunked output is *not* identical to whole-signal output:
each chunk only sees its own 10 s. :meth:`Enhancer.enhance_file` streams long files through that
chunking and writes the output progressively and atomically (:func:`sb_mal.audio.audio_writer`).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from speechbrain.dataio.preprocess import AudioNormalizer
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.callchains import lengths_arg_exists
from speechbrain.utils.fetching import FetchConfig, LocalStrategy

from sb_mal.audio import AudioError, audio_format, audio_info, audio_writer, read_audio, write_audio
from sb_mal.dsp import relative_to_samples
from sb_mal.inference.streaming import (DEFAULT_CHUNK_SECONDS, DEFAULT_OVERLAP_SECONDS, FileReader, chunk_starts,
                                        overlap_add)
from sb_mal.model_folder import folder_layout, load_model_folder
from sb_mal.weights import load_strict

logger = logging.getLogger(__name__)

__all__ = ["Enhancer", "chunk_starts", "load_strict"]


class Enhancer(Pretrained):
    """Speech enhancement with an sb_mal model or a SpeechBrain enhancement folder (module docstring).

    Hparams: ``sample_rate`` (required unless the layout gives it), ``chunk_seconds`` (default 10),
    ``overlap_seconds`` (default 0.5). Load an exported folder or hub repository with :meth:`from_hparams`; pass
    ``run_opts={"device": "cuda:0", "precision": "bf16"}`` for device and autocast precision.

    Example
    -------
    >>> from sb_mal.models import SpectralUNetSE
    >>> model = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1)
    >>> enh = Enhancer(modules={"enhance_model": model}, hparams={"sample_rate": 16000},
    ...                run_opts={"device": "cpu"})
    >>> noisy = torch.randn(2, 16000)
    >>> torch.equal(enh.enhance_batch(noisy), model(noisy))
    True
    >>> enh.enhance_batch(torch.randn(1, 40000), chunk_seconds=1.0).shape  # 3 chunks of 1 s
    torch.Size([1, 40000])
    """

    HPARAMS_NEEDED: list[str] = []  # checked in __init__, where the layout decides what is needed
    MODULES_NEEDED = ["enhance_model"]

    def __init__(self, modules=None, hparams=None, run_opts=None, freeze_params=True, hparams_source=None):
        where = hparams_source or "the hparams given to Enhancer"
        modules = dict(modules or {})
        hparams = dict(hparams or {})
        missing = [m for m in self.MODULES_NEEDED if not isinstance(modules.get(m), torch.nn.Module)]
        if missing:
            raise ValueError(
                f"{where}: `modules` must define {missing} (a torch.nn.Module), found {sorted(modules) or 'none'}"
            )
        layout = folder_layout(hparams, where)
        self.layout = layout.layout
        if layout.sample_rate is None:
            raise ValueError(f"{where}: hyperparameter 'sample_rate' is required but not defined")
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, freeze_params=freeze_params)
        self.sample_rate = layout.sample_rate
        if self.sample_rate <= 0:
            raise ValueError(f"{where}: sample_rate must be positive, got {self.sample_rate}")
        self._model_takes_lengths = lengths_arg_exists(self.mods.enhance_model.forward)
        self._features = layout.input_fn
        self.task = str(hparams.get("task", "enhancement"))
        if self.task not in ("enhancement", "listening"):
            raise ValueError(f"{where}: task must be 'enhancement' or 'listening', got {self.task!r}")
        self.chunk_seconds = float(hparams.get("chunk_seconds", DEFAULT_CHUNK_SECONDS))
        self.overlap_seconds = float(hparams.get("overlap_seconds", DEFAULT_OVERLAP_SECONDS))
        self._chunk_params(None, None)  # validate
        if "audio_normalizer" not in hparams:
            self.audio_normalizer = AudioNormalizer(self.sample_rate)

    @classmethod
    def from_hparams(cls, source, hparams_file: str = "hyperparams.yaml", *, trust_code: bool = False,
                     overrides: dict | None = None, overrides_must_match: bool = True, savedir=None,
                     download_only: bool = False, local_strategy: LocalStrategy | None = None,
                     fetch_config: FetchConfig | None = None, **kwargs) -> Enhancer | None:
        """Load from a local folder or a Hugging Face repo id, as ``Pretrained.from_hparams`` does, through
        :func:`sb_mal.model_folder.load_model_folder` (the loader every sb_mal entry point uses):

        - the hyperparameter file is judged before it runs: anything outside what a model folder may
          run is refused (:class:`sb_mal.trust.UntrustedCodeError`) unless ``trust_code=True``;
        - a local folder never touches the network (``FetchConfig(allow_network=False)`` unless a
          ``fetch_config`` is given), and a path that does not exist is an error, not a hub lookup;
        - weights load strictly, as plain tensors only, from inside the folder;
        - every failure is a :class:`sb_mal.model_folder.ModelLoadError` whose one-line message
          names the file (or hub id) and the cause.

        On Windows, files are copied rather than symlinked into ``savedir`` unless ``local_strategy``
        is given. Other keyword arguments (``run_opts``, ``freeze_params``) go to the constructor.
        """
        folder = load_model_folder(source, hparams_file, trust_code=trust_code, overrides=overrides,
                                   overrides_must_match=overrides_must_match, savedir=savedir,
                                   download_only=download_only, local_strategy=local_strategy,
                                   fetch_config=fetch_config)
        if folder is None:
            return None
        kwargs.setdefault("hparams_source", folder.where)
        return cls(modules=folder.hparams["modules"], hparams=folder.hparams, **kwargs)

    # -- chunking ------------------------------------------------------------------------------
    def _chunk_params(self, chunk_seconds, overlap_seconds) -> tuple[int, int]:
        chunk_s = self.chunk_seconds if chunk_seconds is None else float(chunk_seconds)
        overlap_s = self.overlap_seconds if overlap_seconds is None else float(overlap_seconds)
        chunk, overlap = round(chunk_s * self.sample_rate), round(overlap_s * self.sample_rate)
        if chunk <= 0 or overlap < 0 or 2 * overlap > chunk:
            raise ValueError(
                f"chunk_seconds must be positive and 0 <= overlap_seconds <= chunk_seconds / 2, "
                f"got chunk_seconds={chunk_s}, overlap_seconds={overlap_s}"
            )
        return chunk, overlap

    def compute_features(self, wavs: torch.Tensor) -> torch.Tensor:
        """``log1p(spectral_magnitude(compute_stft(wavs)))``: the input of a spectral-mask model."""
        if self._features is None:
            raise RuntimeError("compute_features() applies to spectral-mask model folders (compute_stft, "
                               "spectral_magnitude, resynth)")
        return self._features(wavs)

    def _run_model(self, wav: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        model = self.mods.enhance_model
        with torch.no_grad(), self.inference_ctx:
            if self.layout == "spectral_mask":
                feats = self.compute_features(wav)
                if self._model_takes_lengths:
                    rel = lengths if lengths is not None else torch.ones(wav.shape[0], device=wav.device)
                    mask = model(feats, lengths=rel)
                else:
                    mask = model(feats)
                out = self.hparams.resynth(torch.expm1(mask * feats), wav)
            else:
                out = model(wav, lengths) if self._model_takes_lengths else model(wav)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 3 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        if out.dim() == 2 and out.shape[0] == wav.shape[0] and 0 < abs(wav.shape[1] - out.shape[1]) < 1024:
            out = torch.nn.functional.pad(out, (0, wav.shape[1] - out.shape[1]))  # STFT framing: pad or crop
        if out.shape != wav.shape:
            raise RuntimeError(f"enhance_model returned shape {tuple(out.shape)} for input {tuple(wav.shape)}")
        return out.float()

    # -- public API ----------------------------------------------------------------------------
    def enhance_batch(self, noisy: torch.Tensor, lengths: torch.Tensor | None = None, *,
                      chunk_seconds: float | None = None, overlap_seconds: float | None = None) -> torch.Tensor:
        """Enhance ``[B, T]`` waveforms (at ``sample_rate``) with relative ``lengths``; returns ``[B, T]``.

        A 1-D ``[T]`` input gives a 1-D output. Samples past each item's length are zero.
        """
        noisy = torch.as_tensor(noisy)
        squeeze = noisy.dim() == 1
        noisy = noisy[None] if squeeze else noisy
        if noisy.dim() != 2 or noisy.shape[1] == 0:
            raise ValueError(f"enhance_batch expects noisy waveforms [batch, samples], got shape {tuple(noisy.shape)}")
        chunk, overlap = self._chunk_params(chunk_seconds, overlap_seconds)
        noisy = noisy.to(self.device, torch.float32)
        batch, total = noisy.shape
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.float32).to(self.device)
            valid = relative_to_samples(lengths, total, batch, self.device)
        if total <= chunk:
            out = self._run_model(noisy, lengths)
        else:
            out = torch.empty_like(noisy)

            def process(x, start, stop):
                rel = None if lengths is None else (valid - start).clamp(1, stop - start).float() / (stop - start)
                return self._run_model(x, rel)

            def emit(start, y):
                out[:, start:start + y.shape[1]] = y

            overlap_add(total, chunk, overlap, lambda a, b: noisy[:, a:b], process, emit, self.device)
        if lengths is not None:
            out = out * (torch.arange(total, device=out.device)[None] < valid[:, None])
        if self.task == "listening":  # a listening-enhancement model: the output keeps the input's power
            from sb_mal.listening import equal_power

            out = equal_power(out, noisy, lengths)
        return out[0] if squeeze else out

    def forward(self, noisy: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`enhance_batch`."""
        return self.enhance_batch(noisy, lengths)

    def enhance_file(self, path, output_path=None, *, chunk_seconds: float | None = None,
                     overlap_seconds: float | None = None, return_waveform: bool = True) -> torch.Tensor | None:
        """Enhance an audio file (any rate, any channels: downmixed and resampled to the model's rate).

        Arguments
        ---------
        path : str or PathLike
            Input file (any format soundfile reads).
        output_path : str or PathLike, optional
            Where to write the enhanced audio (at the model rate; format from the extension; written
            atomically; samples outside [-1, 1] are clipped). Must not be the input file.
        chunk_seconds, overlap_seconds : float, optional
            Override the chunking of the hparams.
        return_waveform : bool
            Return the enhanced ``[T]`` tensor (CPU). Pass False with ``output_path`` to keep memory
            bounded for very long files; None is returned then.
        """
        path = os.fspath(path)
        info = audio_info(path)
        if output_path is not None:
            output_path = os.fspath(output_path)
            if os.path.abspath(output_path) == os.path.abspath(path) or (
                    os.path.exists(output_path) and os.path.samefile(output_path, path)):
                raise AudioError(f"{output_path}: refusing to overwrite the input file")
            audio_format(output_path)  # fails early, naming the file, for an unknown extension
        chunk, overlap = self._chunk_params(chunk_seconds, overlap_seconds)
        reader = FileReader(path, info.frames, info.sample_rate, self.sample_rate)
        try:
            # listening enhancement rescales the whole output to the input's power: one pass in memory
            if reader.total <= chunk or self.task == "listening":
                wav, _ = read_audio(path, self.sample_rate)
                enhanced = self.enhance_batch(wav[None], chunk_seconds=chunk_seconds,
                                              overlap_seconds=overlap_seconds)[0].cpu()
                if output_path is not None and self.task == "listening" and float(enhanced.abs().max()) > 1.0:
                    warnings.warn(f"{output_path}: the modified speech peaks at {float(enhanced.abs().max()):.2f} "
                                  "(full scale 1) and is clipped when written, so the file is slightly below the "
                                  "input's power; lower the input level to keep equal power exactly")
                if output_path is not None:
                    write_audio(output_path, enhanced, self.sample_rate, protect=[path])
                return enhanced if return_waveform else None
            return self._enhance_stream(reader, output_path, chunk, overlap, return_waveform)
        finally:
            reader.close()

    def _enhance_stream(self, reader: FileReader, output_path, chunk, overlap, return_waveform):
        pieces: list[torch.Tensor] = []
        out = audio_writer(output_path, self.sample_rate) if output_path is not None else None

        def emit(start, y):
            y = y[0].detach().cpu()
            if not torch.isfinite(y).all():
                raise AudioError(f"{reader.path}: enhanced audio contains NaN/Inf near sample {start}")
            if out is not None:
                out.write(y.clamp(-1.0, 1.0).numpy())
            if return_waveform:
                pieces.append(y)

        def run():
            return overlap_add(reader.total, chunk, overlap, reader,
                                lambda x, a, b: self._run_model(x.to(self.device), None), emit, self.device)

        if out is None:
            n = run()
        else:
            with out:
                n = run()
        logger.debug("%s: enhanced %d samples in %d chunks", reader.path, reader.total, n)
        return torch.cat(pieces) if return_waveform else None
