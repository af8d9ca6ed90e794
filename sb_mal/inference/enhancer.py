"""``Enhancer``: a SpeechBrain ``Pretrained`` interface for sb_mal's enhancers and SpeechBrain's own.

Three folder layouts are recognised from the hyperparameters, and each model is run the way its
own interface runs it:

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

The sample rate is the hparam ``sample_rate``; for a spectral-mask folder without it,
``compute_stft.sample_rate``; for a folder that defines an ``audio_normalizer``, its rate.

Long signals are enhanced in overlapping chunks (``chunk_seconds``, default 10 s, overlapping by
``overlap_seconds``, default 0.5 s). Each chunk is weighted by a window that is 1 in its middle and
rises/falls as a half Hann (sin^2) ramp over the overlaps with its neighbours; the output is the
weighted sum divided by the summed weights, so where two chunks overlap the result cross-fades from
one to the other without a click. The last chunk is aligned with the end of the signal, so every
chunk has full context. Signals no longer than one chunk are enhanced whole: the result is then
exactly ``enhance_model(wav, lengths)``. For a model with long context (the bidirectional GRU of
:class:`~sb_mal.models.SpectralUNetSE`), chunked output is *not* identical to whole-signal output:
each chunk only sees its own 10 s.

:meth:`Enhancer.enhance_file` reads long files piece by piece (downmixed, resampled to the model
rate with margins so the result equals resampling the whole file) and writes the output
progressively to a temporary file that is renamed at the end, so memory stays bounded for files
of any length (pass ``return_waveform=False`` to not keep the output in memory either).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import warnings
from collections.abc import Callable

import numpy as np
import soundfile as sf
import torch
from speechbrain.dataio.preprocess import AudioNormalizer
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.callchains import lengths_arg_exists
from speechbrain.utils.fetching import FetchConfig, LocalStrategy

from sb_mal.audio import AudioError, audio_format, audio_info, audio_writer, read_audio, resample, write_audio
from sb_mal.checkpoints import ModelLoadError, one_line, resolve_source
from sb_mal.dsp import relative_to_samples
from sb_mal.trust import UntrustedCodeError, load_model_hparams
from sb_mal.weights import WeightsError, load_weights

logger = logging.getLogger(__name__)

__all__ = ["Enhancer", "chunk_starts", "load_strict"]

DEFAULT_CHUNK_SECONDS = 10.0
DEFAULT_OVERLAP_SECONDS = 0.5


def load_strict(module: torch.nn.Module, path) -> None:
    """Pretrainer hook: load a ``state_dict`` file into ``module`` strictly (no silent partial load).

    SpeechBrain's default parameter transfer is non-strict (missing keys are only logged) and
    unpickles whatever the file holds when the environment asks for it; the hyperparams written by
    :func:`sb_mal.inference.export_run` name this hook instead, which reads plain tensors only
    (:func:`sb_mal.weights.load_weights`).
    """
    load_weights(module, path)


def _load_collected(pretrainer, paths: dict, where: str, trust_code: bool) -> None:
    """Load every collected weight file the way :func:`load_strict` does.

    A loadable that is not a ``torch.nn.Module``, or whose custom hook is not :func:`load_strict`,
    is refused unless ``trust_code`` (then its own hook runs)."""
    for name, obj in pretrainer.loadables.items():
        if name not in paths:
            continue
        hook = pretrainer.custom_hooks.get(name)
        if isinstance(obj, torch.nn.Module) and hook in (None, load_strict):
            load_weights(obj, paths[name], built_by=where)
        elif trust_code:
            (hook or _default_hook(obj))(obj, paths[name])
        else:
            raise ModelLoadError(f"{where}: loadable {name!r} ({type(obj).__name__}) is not a torch.nn.Module loaded "
                                 "by sb_mal.inference.load_strict; pass trust_code=True (--trust-code) to run its "
                                 "own load hook")


def _default_hook(obj):
    from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook

    hook = get_default_hook(obj, DEFAULT_LOAD_HOOKS)
    if hook is None:
        raise ModelLoadError(f"don't know how to load a {type(obj).__name__}")
    return lambda o, p: hook(o, p, False)


def _check_weight_paths(pretrainer, folder: str | None, hub_id, where: str) -> None:
    """Keep an untrusted folder's weights inside it.

    A pretrainer ``paths`` entry may name a file of the folder itself (``enhance_model.ckpt``) or,
    as SpeechBrain's hub folders do, the same file under the folder's own hub id
    (``speechbrain/metricgan-plus-voicebank/enhance_model.ckpt``). For a local folder (e.g. a
    downloaded copy of a hub folder) that always means the folder's own file, which must exist;
    any other location (another repository, an absolute path, ``..``) is refused.
    """
    from speechbrain.utils.parameter_transfer import Pretrainer

    from sb_mal.checkpoints import _HUB_ID

    for name in pretrainer.loadables:
        given = pretrainer.paths.get(name)
        filename = f"{name}.ckpt"
        if given is not None:
            source, filename = Pretrainer.split_path(given) if not isinstance(given, os.PathLike) \
                else Pretrainer.split_path(os.fspath(given))
            source = str(getattr(source, "path", source))
            own = source in ("", "./", ".") or (folder is None and source == str(hub_id))
            if folder is not None and source not in ("", "./", "."):
                own = _HUB_ID.match(source) is not None  # org/name: the hub id this folder was downloaded from
            if not own or filename in ("", ".", "..") or "\\" in filename:
                raise UntrustedCodeError(f"{where}: the pretrainer loads {name!r} from {given!r}, outside the model "
                                         "folder; pass trust_code=True (--trust-code) if you trust it")
            if folder is not None:
                pretrainer.paths[name] = os.path.join(folder, filename)
        if folder is not None and not os.path.isfile(os.path.join(folder, filename)):
            raise ModelLoadError(f"{os.path.join(folder, filename)}: missing (the weights of {name!r} named by {where})")


def chunk_starts(total: int, chunk: int, overlap: int) -> list[int]:
    """Start samples of the chunks covering ``total`` samples (regular hop, last chunk end-aligned).

    Example
    -------
    >>> chunk_starts(25, 10, 2)
    [0, 8, 15]
    >>> chunk_starts(7, 10, 2)
    [0]
    """
    if chunk <= 0 or not 0 <= overlap <= chunk // 2:
        raise ValueError(f"need chunk > 0 and 0 <= overlap <= chunk/2, got chunk={chunk}, overlap={overlap}")
    if total <= chunk:
        return [0]
    starts = list(range(0, total - chunk, chunk - overlap))
    return starts + [total - chunk]


def _ramp(n: int, device) -> torch.Tensor:
    """Fade-in of ``n`` samples, strictly inside (0, 1); reversed it is its complement."""
    return torch.sin(0.5 * math.pi * (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n) ** 2


def _overlap_add(total, chunk, overlap, read: Callable, process: Callable, emit: Callable, device) -> int:
    """Run ``process`` on overlapping chunks from ``read(start, stop)``; ``emit(start, samples)`` in order.

    Only about two chunks are ever held in memory. Returns the number of chunks.
    """
    starts = chunk_starts(total, chunk, overlap)
    fade_in = _ramp(overlap, device) if overlap else None
    num = den = None
    base = 0
    for k, start in enumerate(starts):
        stop = min(start + chunk, total)
        y = process(read(start, stop), start, stop)
        w = torch.ones(stop - start, device=y.device)
        if overlap and k > 0:
            w[:overlap] = fade_in
        if overlap and k < len(starts) - 1:
            w[-overlap:] = fade_in.flip(0)
        if num is None:
            num, den = y.new_zeros(y.shape[0], 0), y.new_zeros(0)
        grow = stop - base - den.shape[0]
        if grow > 0:
            num = torch.cat([num, num.new_zeros(num.shape[0], grow)], 1)
            den = torch.cat([den, den.new_zeros(grow)])
        num[:, start - base:stop - base] += w * y
        den[start - base:stop - base] += w
        final = (starts[k + 1] if k + 1 < len(starts) else total) - base  # nothing later touches these
        emit(base, num[:, :final] / den[:final])
        num, den, base = num[:, final:], den[final:], base + final
    return len(starts)


class _FileReader:
    """Read ``[start, stop)`` of a file in *model-rate* samples, mono, without decoding the rest.

    Resampling runs on the piece plus margins of whole resampler periods, so every sample equals
    what resampling the whole file would give (up to float rounding).
    """

    def __init__(self, path: str, frames: int, file_rate: int, rate: int):
        self.path, self.frames, self.file_rate, self.rate = path, frames, file_rate, rate
        g = math.gcd(file_rate, rate)
        self.of, self.nf = file_rate // g, rate // g  # one period: `of` file samples -> `nf` model samples
        width = math.ceil(6 * self.of / (0.99 * min(self.of, self.nf)))  # torchaudio's sinc kernel half-width
        self.margin = math.ceil(width / self.of) + 2  # periods
        self.total = frames if file_rate == rate else math.ceil(frames * self.nf / self.of)
        self._file = sf.SoundFile(path)

    def close(self) -> None:
        self._file.close()

    def _read_frames(self, a: int, b: int) -> np.ndarray:
        self._file.seek(a)
        data = self._file.read(b - a, dtype="float32", always_2d=True)
        data = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if not np.isfinite(data).all():
            raise AudioError(f"{self.path}: audio contains NaN/Inf sample(s) between frames {a} and {b}")
        return np.ascontiguousarray(data, dtype=np.float32)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if self.file_rate == self.rate:
            return torch.from_numpy(self._read_frames(start, stop))[None]
        p0 = max(0, start // self.nf - self.margin)
        p1 = -(-stop // self.nf) + self.margin
        piece = resample(self._read_frames(p0 * self.of, min(p1 * self.of, self.frames)), self.file_rate, self.rate)
        offset = p0 * self.nf
        return torch.from_numpy(np.ascontiguousarray(piece[start - offset:stop - offset]))[None]


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
    SPECTRAL_MASK_HPARAMS = ("compute_stft", "spectral_magnitude", "resynth")

    def __init__(self, modules=None, hparams=None, run_opts=None, freeze_params=True, hparams_source=None):
        where = hparams_source or "the hparams given to Enhancer"
        modules = dict(modules or {})
        hparams = dict(hparams or {})
        missing = [m for m in self.MODULES_NEEDED if not isinstance(modules.get(m), torch.nn.Module)]
        if missing:
            raise ValueError(
                f"{where}: `modules` must define {missing} (a torch.nn.Module), found {sorted(modules) or 'none'}"
            )
        present = [k for k in self.SPECTRAL_MASK_HPARAMS if k in hparams]
        if present and len(present) < len(self.SPECTRAL_MASK_HPARAMS):
            missing = [k for k in self.SPECTRAL_MASK_HPARAMS if k not in hparams]
            raise ValueError(f"{where}: a spectral-mask model folder needs {list(self.SPECTRAL_MASK_HPARAMS)}; "
                             f"{missing} not defined")
        self.layout = "spectral_mask" if present else "waveform"
        rate = hparams.get("sample_rate")
        if rate is None and self.layout == "spectral_mask":
            rate = getattr(hparams["compute_stft"], "sample_rate", None)
        if rate is None and "audio_normalizer" in hparams:
            rate = getattr(hparams["audio_normalizer"], "sample_rate", None)
        if rate is None:
            raise ValueError(f"{where}: hyperparameter 'sample_rate' is required but not defined")
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, freeze_params=freeze_params)
        self.sample_rate = int(rate)
        if self.sample_rate <= 0:
            raise ValueError(f"{where}: sample_rate must be positive, got {rate}")
        self._model_takes_lengths = lengths_arg_exists(self.mods.enhance_model.forward)
        self._features = None
        if self.layout == "spectral_mask":
            from sb_mal.losses.model_taps import Log1pMagnitude

            self._features = Log1pMagnitude(hparams["compute_stft"], spectral_magnitude=hparams["spectral_magnitude"])
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
        """Load from a local folder or a Hugging Face repo id, as ``Pretrained.from_hparams`` does, with
        three differences:

        - the hyperparameter file is checked before it runs: a tag calling anything outside
          :data:`sb_mal.trust.ALLOWED` is refused (:class:`sb_mal.trust.UntrustedCodeError`) unless
          ``trust_code=True``;
        - a local folder never touches the network (``FetchConfig(allow_network=False)`` unless a
          ``fetch_config`` is given), and a path that does not exist is an error, not a hub lookup;
        - every failure is a :class:`sb_mal.checkpoints.ModelLoadError` whose one-line message
          names the file (or hub id) and the cause: an unreadable, empty or truncated checkpoint, a
          checkpoint that does not match the model the hyperparameters build, a broken YAML.

        On Windows, files are copied rather than symlinked into ``savedir`` unless ``local_strategy``
        is given. Other keyword arguments (``run_opts``, ``freeze_params``) go to the constructor.
        """
        from speechbrain.utils.fetching import fetch

        kind, src = resolve_source(source)
        if kind == "local":
            if not src.is_dir():
                raise ModelLoadError(f"{src}: is a file; a model source is a folder (with {hparams_file}) or a hub id")
            src = os.fspath(src)
            fetch_config = fetch_config or FetchConfig(allow_network=False)
        fetch_config = fetch_config or FetchConfig()
        if local_strategy is None:
            local_strategy = LocalStrategy.COPY if platform.system() == "Windows" else LocalStrategy.SYMLINK
        origin = src if kind == "local" else f"hub model {src}"
        try:
            hparams_path = fetch(filename=hparams_file, source=src, savedir=savedir, save_filename=None,
                                 local_strategy=local_strategy, fetch_config=fetch_config)
        except Exception as err:  # noqa: BLE001 - the hub and the file system raise many kinds
            raise ModelLoadError(f"{origin}: cannot fetch {hparams_file} ({one_line(err, 200)})") from err
        where = os.path.join(src, hparams_file) if kind == "local" else f"{src}/{hparams_file}"
        try:
            hparams = load_model_hparams(hparams_path, trust_code, overrides, overrides_must_match)
        except UntrustedCodeError:
            raise
        except Exception as err:  # noqa: BLE001 - anything a YAML program raises: name the file
            raise ModelLoadError(f"{where}: cannot be loaded ({one_line(err, 300)})") from err
        for key in ("pretrainer", "modules"):
            if not isinstance(hparams, dict) or key not in hparams:
                raise ModelLoadError(f"{where}: no {key!r} defined (see sb_mal.inference.export_run)")
        hparams["savedir"] = savedir
        pretrainer = hparams["pretrainer"]
        if not trust_code:
            _check_weight_paths(pretrainer, src if kind == "local" else None, src, where)
        pretrainer.set_collect_in(savedir)
        try:
            paths = pretrainer.collect_files(default_source=src, local_strategy=local_strategy,
                                             fetch_config=fetch_config)
        except Exception as err:  # noqa: BLE001
            names = ", ".join(f"{n}.ckpt" for n in pretrainer.loadables)
            raise ModelLoadError(f"{origin}: cannot fetch the weights named by {hparams_file} ({names}): "
                                 f"{one_line(err, 300)}") from err
        if download_only:
            return None
        try:
            _load_collected(pretrainer, paths, where, trust_code)
        except WeightsError as err:
            raise ModelLoadError(str(err)) from err
        kwargs.setdefault("hparams_source", where)
        return cls(modules=hparams["modules"], hparams=hparams, **kwargs)

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

            _overlap_add(total, chunk, overlap, lambda a, b: noisy[:, a:b], process, emit, self.device)
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
        reader = _FileReader(path, info.frames, info.sample_rate, self.sample_rate)
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

    def _enhance_stream(self, reader: _FileReader, output_path, chunk, overlap, return_waveform):
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
            return _overlap_add(reader.total, chunk, overlap, reader,
                                lambda x, a, b: self._run_model(x.to(self.device), None), emit, self.device)

        if out is None:
            n = run()
        else:
            with out:
                n = run()
        logger.debug("%s: enhanced %d samples in %d chunks", reader.path, reader.total, n)
        return torch.cat(pieces) if return_waveform else None
