"""Frozen speech encoders as frame-feature models: one interface, three families.

A *frame-feature extractor* turns ``[B, T]`` waveforms (plus SpeechBrain relative lengths, or
integer valid-sample counts) into frame features ``[B, frames, D]`` (``[L, B, frames, D]`` for a
list of layers) and integer valid-frame counts. The feature losses of :mod:`sb_mal.losses.ssl`
(``ssl_l1``, ``ssl_mse``, ``ssl_mse_pad``, ``ssl_softdtw``) and the shift study of
:mod:`sb_mal.evaluation.shift` accept any of them. All are frozen perceptual-loss networks (see
:class:`~sb_mal.models.frozen.FrozenNetworks`): gradient reaches the input waveform, never the
weights; they compute in float32 inside autocast; their weights stay out of ``state_dict()``.

=====================================  ===========================================================
``source``                             extractor
=====================================  ===========================================================
hub id or ``save_pretrained`` folder   :class:`~sb_mal.models.ssl.SSLFeatureExtractor`: WavLM, HuBERT,
                                       wav2vec 2.0 (self-supervised transformers, 20 ms frames)
``"torchfcpe"``                        :class:`FCPEFeatureExtractor`: the pitch estimator shipped in
                                       the ``torchfcpe`` wheel (``pip install "sb_mal[encoders]"``)
``"resemblyzer"``                      :class:`ResemblyzerFeatureExtractor`: the speaker encoder
                                       shipped in the ``Resemblyzer`` wheel (same extra)
=====================================  ===========================================================

Neither wheel encoder is a self-supervised transformer. FCPE is a *supervised* F0 estimator: a
convolution stack and six conformer-style layers (convolution modules only, no attention in the
shipped weights) over 128-band log-mel frames, 10 ms hop, trained to classify pitch into 360
cent bins; its features carry pitch and harmonicity, little phonetic content, and each frame
sees about +-0.9 s around it (no positional embedding: features move with the audio). The
Resemblyzer encoder is a 3-layer *unidirectional* LSTM over 40-band (power, not log) mel frames,
10 ms hop, trained with a speaker-verification (GE2E) objective: it is causal (a frame's feature
depends on everything before it, so trailing padding never changes earlier frames, while leading
padding changes the state everything after it starts from) and its features are about who
speaks, not what is said. Both load their weights with ``torch.load(weights_only=True)`` from
the installed package's folder, without importing the package's own model code for Resemblyzer
(whose import needs ``webrtcvad`` and ``pkg_resources``).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sb_mal.dsp import relative_to_samples
from sb_mal.models.frozen import FrozenNetworks, loss_mode

__all__ = ["FCPEFeatureExtractor", "FrameFeatureExtractor", "ResemblyzerFeatureExtractor", "WHEEL_ENCODERS"]

WHEEL_ENCODERS = ("torchfcpe", "resemblyzer")


class FrameFeatureExtractor(FrozenNetworks):
    """Base of the frozen frame-feature models (see the module docstring).

    Subclasses set ``source``, ``num_hidden_states``, ``layers`` (via :meth:`_parse_layers`),
    ``normalize_input``, ``sample_rate``, ``frame_hop`` (samples per frame), ``receptive`` (the
    fewest samples that give one frame), ``feature_dim``, and implement :meth:`frames` and
    :meth:`_encode`.
    """

    default_layers = "last"

    # -- configuration ------------------------------------------------------------------------------
    def _parse_layers(self, layers):
        if isinstance(layers, str):
            if layers not in ("last", "average"):
                raise ValueError(f"layers must be 'last', 'average', an int or a list of ints, got {layers!r}")
            return layers
        if isinstance(layers, int) and not isinstance(layers, bool):
            return self._check_index(layers)
        layers = list(layers) if isinstance(layers, (list, tuple)) else []
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"layers must be 'last', 'average', an int or a non-empty list of ints, got {layers!r}")
        return [self._check_index(i) for i in layers]

    def _check_index(self, index: int) -> int:
        n = self.num_hidden_states
        if not -n <= index < n:
            raise ValueError(f"layer index {index} out of range: {self.source} has {n} hidden states "
                             f"(indices {-n}..{n - 1})")
        return index

    @property
    def multi_layer(self) -> bool:
        """Whether features come as ``[L, B, frames, D]`` (a list of layers)."""
        return isinstance(self.layers, list)

    def frames(self, samples: int | torch.Tensor) -> int | torch.Tensor:
        """Valid frames for ``samples`` valid input samples."""
        raise NotImplementedError

    def _check_rate(self, sample_rate: int) -> None:
        if int(sample_rate) != 16000:
            raise ValueError(f"{type(self).__name__}: sample_rate={sample_rate}, but the encoder expects 16000 Hz "
                             "input; resample the audio to 16 kHz first (sb_mal.audio.resample)")

    def extra_repr(self) -> str:
        return f"source={self.source!r}, layers={self.layers!r}, normalize_input={self.normalize_input}"

    # -- features -------------------------------------------------------------------------------------
    def normalize_waveform(self, wav: torch.Tensor, sample_counts: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance per row over its first ``sample_counts`` samples; padding set to 0."""
        mask = (torch.arange(wav.shape[1], device=wav.device)[None, :] < sample_counts[:, None]).to(wav.dtype)
        count = mask.sum(1, keepdim=True).clamp(min=1)
        mean = (wav * mask).sum(1, keepdim=True) / count
        var = ((wav - mean).pow(2) * mask).sum(1, keepdim=True) / count
        return (wav - mean) / torch.sqrt(var + 1e-7) * mask

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, frames, D]`` (``[L, B, frames, D]`` for a list of layers) and valid frames ``[B]``.

        ``lengths`` are SpeechBrain relative lengths (valid samples ``round(lengths * T)``).
        Features of padded frames are zero.
        """
        wav = _as_batch(wav, type(self).__name__)
        counts = relative_to_samples(lengths, wav.shape[1], wav.shape[0], wav.device)
        return self.extract(wav, counts if lengths is not None else None)

    def extract(self, wav: torch.Tensor, sample_counts: torch.Tensor | None = None,
                normalize: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` with integer valid-sample counts; ``normalize`` overrides ``normalize_input``."""
        wav = _as_batch(wav, type(self).__name__)
        batch, total = wav.shape
        if total < self.receptive:
            raise ValueError(f"{type(self).__name__}: input has {total} samples, fewer than one frame's receptive "
                             f"field ({self.receptive} samples at {self.sample_rate} Hz)")
        padded = sample_counts is not None and bool((sample_counts < total).any())
        counts = (torch.full((batch,), total, dtype=torch.long, device=wav.device) if sample_counts is None
                  else sample_counts.to(wav.device).long().clamp(1, total))
        wav = self.follow(wav)

        with torch.autocast(device_type=wav.device.type, enabled=False), contextlib.ExitStack() as modes:
            for net in self.frozen_networks():
                net.eval()  # frozen stays frozen, whatever switched it
                modes.enter_context(loss_mode(net))  # RNNs in train mode, dropout 0: cuDNN backward needs it
            normalize = self.normalize_input if normalize is None else normalize
            if normalize:
                wav = self.normalize_waveform(wav, counts)
            elif padded:
                wav = wav * (torch.arange(total, device=wav.device)[None, :] < counts[:, None])
            frames = torch.as_tensor(self.frames(counts)).to(wav.device)
            feats = self._encode(wav, counts, padded)
        valid = torch.arange(feats.shape[-2], device=wav.device)[None, :] < frames[:, None]
        feats = feats * valid[..., None].to(feats.dtype)
        return (feats if self.multi_layer else feats[0]), frames

    def _encode(self, wav: torch.Tensor, counts: torch.Tensor, padded: bool) -> torch.Tensor:
        """Selected layers ``[L, B, frames, D]`` of a batch whose padding is already zero."""
        raise NotImplementedError

    def _select(self, hidden: Sequence[torch.Tensor], last: torch.Tensor) -> torch.Tensor:
        """``[L, B, F, D]`` from the per-layer states ``hidden`` and the final output ``last``."""
        if self.layers == "last":
            return last[None]
        if self.layers == "average":
            return torch.stack(tuple(hidden)).mean(0)[None]
        if isinstance(self.layers, int):
            return hidden[self.layers][None]
        return torch.stack([hidden[i] for i in self.layers])


def _as_batch(wav: torch.Tensor, name: str) -> torch.Tensor:
    if wav.dim() == 3 and wav.shape[-1] == 1:
        wav = wav.squeeze(-1)
    if wav.dim() != 2:
        raise ValueError(f"{name}: expected waveforms [batch, samples], got {tuple(wav.shape)}")
    return wav


def _package_file(package: str, relative: str, extra: str) -> Path:
    """A data file of an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {package!r} package is not installed: pip install \"sb_mal[{extra}]\"")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise OSError(f"{path}: not found; the installed {package!r} package does not ship its weights "
                      f"(reinstall it: pip install --force-reinstall \"sb_mal[{extra}]\")")
    return path


def _load_weights(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unreadable or tampered file: name it
        raise OSError(f"{path}: could not be read as plain tensors with torch.load(weights_only=True) "
                      f"({type(err).__name__}: {err})") from err


def _mel_filters(n_fft: int, n_mels: int, sample_rate: int, f_max: float) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filters ``[n_mels, n_fft // 2 + 1]`` (librosa's default)."""
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, float(f_max), n_mels, sample_rate,
                                               norm="slaney", mel_scale="slaney")
    return fb.T.contiguous()


class FCPEFeatureExtractor(FrameFeatureExtractor):
    """The pitch estimator of the ``torchfcpe`` wheel as a frozen frame-feature model (10 ms frames).

    Hidden states: index 0 is the output of the input convolutions, ``k`` (1..6) the output of
    encoder layer ``k``; ``"last"`` is the last layer after the model's final LayerNorm (the input
    of its pitch classifier). All are 512-dimensional.

    The input convolutions contain a GroupNorm over the whole time axis; here its statistics are taken
    over each item's valid frames only, so the features of a padded item equal those of the item
    alone (to about 0.3 %) except within about 0.9 s of its end (the reach of the convolutions).

    The log-mel front end is the one the model was trained with (1024-point Hann window, hop 160,
    128 Slaney mel bands 0-8 kHz, ``log(max(x, 1e-5))``, reflect padding of 432 samples each side),
    computed here with gradient (torchfcpe's own front end runs under ``no_grad``).

    Arguments
    ---------
    layers : "last", int, list of int or "average"
        As for :class:`~sb_mal.models.ssl.SSLFeatureExtractor`, over the 7 hidden states.
    normalize_input : bool
        Zero mean, unit variance per utterance (default False: the model was trained on raw
        waveforms in [-1, 1], so its features, and losses on them, follow the input's level).
    weights : str or Path, optional
        A checkpoint in torchfcpe's format (default: the one inside the wheel).

    Example
    -------
    >>> ext = FCPEFeatureExtractor(layers=[0, -1])  # doctest: +SKIP
    >>> feats, frames = ext(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))  # doctest: +SKIP
    >>> tuple(feats.shape), frames.tolist()  # doctest: +SKIP
    ((2, 2, 101, 512), [101, 51])
    """

    def __init__(self, layers: str | int | Sequence[int] = "last", normalize_input: bool = False,
                 sample_rate: int = 16000, weights: str | Path | None = None):
        super().__init__()
        self._check_rate(sample_rate)
        try:
            from torchfcpe.models import CFNaiveMelPE
        except ImportError as err:
            raise ImportError("FCPEFeatureExtractor needs torchfcpe: pip install \"sb_mal[encoders]\"") from err
        path = Path(weights) if weights is not None else _package_file("torchfcpe", "assets/fcpe_c_v001.pt", "encoders")
        ckpt = _load_weights(path)
        try:
            mel, cfg = ckpt["config_dict"]["mel"], ckpt["config_dict"]["model"]
            model = CFNaiveMelPE(input_channels=mel["num_mels"], out_dims=cfg["out_dims"],
                                 hidden_dims=cfg["hidden_dims"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                                 f0_max=cfg["f0_max"], f0_min=cfg["f0_min"], use_fa_norm=cfg["use_fa_norm"],
                                 conv_only=cfg["conv_only"], conv_dropout=0.0, atten_dropout=0.0)
            model.load_state_dict(ckpt["model"])
        except (KeyError, TypeError, RuntimeError) as err:
            raise OSError(f"{path}: not a torchfcpe CFNaiveMelPE checkpoint ({type(err).__name__}: {err})") from err
        if int(mel["sr"]) != 16000 or int(mel["hop_size"]) != 160:
            raise OSError(f"{path}: expected a 16 kHz model with hop 160, got sr={mel['sr']} hop={mel['hop_size']}")
        self.freeze("_fcpe", model.float(), in_state_dict=False)
        self.register_buffer("mel_filters", _mel_filters(int(mel["n_fft"]), int(mel["num_mels"]), 16000,
                                                         float(mel["fmax"])), persistent=False)
        self.register_buffer("window", torch.hann_window(int(mel["win_size"])), persistent=False)
        self.n_fft, self.win_size = int(mel["n_fft"]), int(mel["win_size"])
        self.source = "torchfcpe"
        self.num_hidden_states = 1 + len(model.net.encoder_layers)
        self.layers = self._parse_layers(layers)
        self.normalize_input = bool(normalize_input)
        self.sample_rate = 16000
        self.frame_hop = int(mel["hop_size"])
        self.receptive = self.frame_hop
        self.feature_dim = int(cfg["hidden_dims"])

    @property
    def model(self) -> nn.Module:
        """The wrapped (frozen) ``CFNaiveMelPE``."""
        return self._fcpe

    def frames(self, samples):
        if isinstance(samples, torch.Tensor):
            return torch.div(samples, self.frame_hop, rounding_mode="floor").long() + 1
        return int(samples) // self.frame_hop + 1

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, frames, 128]`` log-mel frames, ``frames = T // 160 + 1`` (as the model was trained)."""
        total = wav.shape[1]
        left = (self.win_size - self.frame_hop) // 2
        right = max((self.win_size - self.frame_hop + 1) // 2, self.win_size - total - left)
        mode = "reflect" if right < total else "constant"
        padded = nn.functional.pad(wav[:, None, :], (left, right), mode=mode)[:, 0]
        spec = torch.stft(padded, self.n_fft, hop_length=self.frame_hop, win_length=self.win_size,
                          window=self.window.to(wav.dtype), center=False, return_complex=True)
        mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        mel = torch.log(torch.clamp(self.mel_filters.to(wav.dtype) @ mag, min=1e-5)).transpose(1, 2)
        want = int(self.frames(total))
        if mel.shape[1] < want:
            mel = torch.cat([mel, mel[:, -1:].expand(-1, want - mel.shape[1], -1)], 1)
        return mel[:, :want]

    def _input_stack(self, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The model's input convolutions, its GroupNorm computing statistics over valid frames only
        (over the padded length, as ``nn.GroupNorm`` would, padding would change every frame)."""
        conv1, norm, act, conv2 = self._fcpe.input_stack
        x = conv1(mel.transpose(1, 2))  # [B, C, F]
        batch, channels, width = x.shape
        mask = (torch.arange(width, device=x.device)[None, :] < frames[:, None]).to(x.dtype)[:, None, None, :]
        groups = x.reshape(batch, norm.num_groups, channels // norm.num_groups, width)
        count = mask.sum(-1, keepdim=True) * groups.shape[2]
        mean = (groups * mask).sum((2, 3), keepdim=True) / count
        var = ((groups - mean).pow(2) * mask).sum((2, 3), keepdim=True) / count
        x = ((groups - mean) / torch.sqrt(var + norm.eps)).reshape(batch, channels, width)
        x = x * norm.weight[None, :, None] + norm.bias[None, :, None]
        return conv2(act(x)).transpose(1, 2)

    def _encode(self, wav, counts, padded):
        model = self._fcpe
        x = self._input_stack(self.log_mel(wav), self.frames(counts))
        hidden = [x]
        for layer in model.net.encoder_layers:
            x = layer(x)
            hidden.append(x)
        return self._select(hidden, model.norm(x))


class ResemblyzerFeatureExtractor(FrameFeatureExtractor):
    """The speaker encoder of the ``Resemblyzer`` wheel as a frozen frame-feature model (10 ms frames).

    Hidden states: index ``k`` (0..2) is the per-frame output of LSTM layer ``k + 1`` (256-dim);
    ``"last"`` is layer 3. The front end is the one the model was trained with: 400-point Hann
    window, hop 160, centred with zero padding, 40 Slaney mel bands of the *power* spectrum (no
    logarithm).

    Arguments
    ---------
    layers : "last", int, list of int or "average"
        Over the 3 LSTM layers.
    normalize_input : bool
        Scale each utterance to -30 dBFS RMS over its valid samples (default True), the level
        Resemblyzer's own preprocessing sets; the power-mel front end is very level-sensitive.
    weights : str or Path, optional
        A state dict in Resemblyzer's format (default: ``pretrained.pt`` inside the wheel).
    """

    TARGET_DBFS = -30.0

    def __init__(self, layers: str | int | Sequence[int] = "last", normalize_input: bool = True,
                 sample_rate: int = 16000, weights: str | Path | None = None):
        super().__init__()
        self._check_rate(sample_rate)
        path = Path(weights) if weights is not None else _package_file("resemblyzer", "pretrained.pt", "encoders")
        state = _load_weights(path)
        state = state.get("model_state", state) if isinstance(state, dict) else state
        lstms = nn.ModuleList()
        try:
            n_layers = 1 + max(int(k.rsplit("_l", 1)[1]) for k in state if k.startswith("lstm.weight_ih_l"))
            for i in range(n_layers):
                w_ih = state[f"lstm.weight_ih_l{i}"]
                lstm = nn.LSTM(w_ih.shape[1], w_ih.shape[0] // 4, 1, batch_first=True)
                lstm.load_state_dict({f"{name}_l0": state[f"lstm.{name}_l{i}"]
                                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
                lstms.append(lstm)
        except (KeyError, ValueError, RuntimeError, AttributeError) as err:
            raise OSError(f"{path}: not a Resemblyzer voice-encoder state dict ({type(err).__name__}: {err})") from err
        self.freeze("_lstms", lstms, in_state_dict=False)
        self.n_fft, self.n_mels = 400, int(lstms[0].input_size)
        self.register_buffer("mel_filters", _mel_filters(self.n_fft, self.n_mels, 16000, 8000.0), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.source = "resemblyzer"
        self.num_hidden_states = n_layers
        self.layers = self._parse_layers(layers)
        self.normalize_input = bool(normalize_input)
        self.sample_rate = 16000
        self.frame_hop = 160
        self.receptive = self.frame_hop
        self.feature_dim = int(lstms[-1].hidden_size)

    def frames(self, samples):
        if isinstance(samples, torch.Tensor):
            return torch.div(samples, self.frame_hop, rounding_mode="floor").long() + 1
        return int(samples) // self.frame_hop + 1

    def normalize_waveform(self, wav: torch.Tensor, sample_counts: torch.Tensor) -> torch.Tensor:
        """Each row scaled to -30 dBFS RMS over its first ``sample_counts`` samples; padding set to 0."""
        mask = (torch.arange(wav.shape[1], device=wav.device)[None, :] < sample_counts[:, None]).to(wav.dtype)
        rms = torch.sqrt((wav.pow(2) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1) + 1e-10)
        return wav * mask * (10 ** (self.TARGET_DBFS / 20) / rms)

    def power_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, T // 160 + 1, 40]`` power mel frames."""
        spec = torch.stft(wav, self.n_fft, hop_length=self.frame_hop, window=self.window.to(wav.dtype),
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)
        return (self.mel_filters.to(wav.dtype) @ power).transpose(1, 2)

    def _encode(self, wav, counts, padded):
        x = self.power_mel(wav)
        hidden = []
        for lstm in self._lstms:
            x, _ = lstm(x)
            hidden.append(x)
        return self._select(hidden, x)
