"""A frozen self-supervised speech model (WavLM, HuBERT, wav2vec 2.0) used as a feature extractor.

:class:`SSLFeatureExtractor` wraps any transformers model with a wav2vec2-style convolutional
front end (``AutoModel``: WavLM by default, HuBERT, wav2vec 2.0, data2vec-audio) and turns
``[B, T]`` waveforms at 16 kHz plus SpeechBrain relative lengths into frame features and integer
valid-frame counts. It is meant to serve as a *perceptual loss network*:

- it is frozen: ``requires_grad=False`` on every weight, always in eval mode (no dropout, no
  LayerDrop, no SpecAugment masking), whatever ``.train()`` a Brain calls;
- gradient flows through it to the input waveform, never into its weights;
- it computes in float32 even inside an autocast region.

Padding. Valid frame counts come from the model's own convolution arithmetic
(``_get_feat_extract_output_lengths``). Models whose first conv layers use LayerNorm
(``feat_extract_norm="layer"``, e.g. WavLM-Large) were trained with attention masks: we pass one,
so the features of the valid frames of a padded item equal those of the item alone. Models with a
GroupNorm first layer (``feat_extract_norm="group"``, e.g. WavLM-Base(+), HuBERT-Base) were trained
without: we zero the padding and pass no mask, as transformers recommends. The GroupNorm then
computes its statistics over the padded length too, so padding changes the valid features
slightly; ``per_item=True`` runs each item alone at its own length when that matters.

Input normalisation (``normalize_input=True``, default) is zero mean, unit variance per utterance
over its *valid* samples only (SpeechBrain's wrapper layer-norms the whole padded row instead).
Note it makes the features, and so any loss on them, invariant to the input gain.

The weights are kept out of ``parameters()`` and ``state_dict()``: they come from ``source`` and
are never trained, so optimisers ignore them and checkpoints do not carry hundreds of MB of
copies. ``.to(device)`` still moves them, and :meth:`extract` moves them to the input's device if
needed (so a loss holding an extractor works as ``compute_cost`` outside ``modules``): the shared
mechanism of :class:`sb_mal.models.frozen.FrozenNetworks`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sb_mal.models.frame_features import FrameFeatureExtractor

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SSL_SOURCE", "SSLFeatureExtractor", "SSLModelLoadError", "build_tiny_wavlm", "load_ssl_model"]

DEFAULT_SSL_SOURCE = "microsoft/wavlm-base-plus"
SSL_SAMPLE_RATE = 16000


class SSLModelLoadError(OSError):
    """transformers could not load the requested SSL model."""


def load_ssl_model(source: str | Path, cache_dir: str | Path | None = None,
                   local_files_only: bool | None = None) -> nn.Module:
    """Load a speech SSL model with ``transformers.AutoModel`` (hub id or local folder).

    Arguments
    ---------
    source : str or Path
        Hub id (e.g. ``microsoft/wavlm-base-plus``) or a folder written by ``save_pretrained``.
    cache_dir : str or Path, optional
        Where hub downloads are cached (default: transformers' own, i.e. ``$HF_HOME``).
    local_files_only : bool, optional
        Default: True for an existing folder, transformers' default (network allowed unless
        ``HF_HUB_OFFLINE=1``) for a hub id.

    Raises
    ------
    SSLModelLoadError
        The source cannot be loaded; the message names it and what to do offline.
    """
    try:
        from transformers import AutoModel
    except ImportError as err:  # pragma: no cover - transformers is a dependency of the SSL extra
        raise ImportError("SSL features need transformers: pip install transformers") from err
    text = str(source)
    path = Path(text).expanduser()
    is_dir = path.is_dir()
    looks_like_path = text.startswith((".", "/", "~")) or isinstance(source, Path) or text.count("/") > 1
    if looks_like_path and not is_dir:
        raise SSLModelLoadError(f"SSL model source {text!r}: no such folder (expected a folder written by "
                                "save_pretrained with config.json and model weights, or a hub id like "
                                f"{DEFAULT_SSL_SOURCE!r})")
    kwargs: dict = {}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if local_files_only is None and is_dir:
        local_files_only = True
    if local_files_only is not None:
        kwargs["local_files_only"] = bool(local_files_only)
    try:
        model = AutoModel.from_pretrained(str(path) if is_dir else text, **kwargs)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... : name the source
        hint = ("the folder must hold config.json and model weights (model.safetensors or pytorch_model.bin) "
                "as written by save_pretrained" if is_dir else
                "a hub id needs network access once, after which it is cached (cache_dir or $HF_HOME); offline "
                "(HF_HUB_OFFLINE=1, local_files_only=True) it must already be in that cache, or give a local "
                "folder written by save_pretrained")
        cause = " ".join(str(err).split())[:300]
        raise SSLModelLoadError(f"could not load SSL model source={text!r} with transformers.AutoModel "
                                f"({type(err).__name__}: {cause}); {hint}") from err
    return model


def build_tiny_wavlm(folder: str | Path | None = None, *, num_layers: int = 2, hidden_size: int = 64,
                     norm: str = "layer", dropout: float = 0.1, seed: int = 0) -> nn.Module:
    """A tiny random WavLM (about 0.1 M parameters) for tests, doctests and offline smoke runs.

    ``norm="layer"`` gives a WavLM-Large-style model (LayerNorm conv front end, pre-LN encoder,
    trained-with-attention-mask kind); ``norm="group"`` a WavLM-Base-style one. The frame hop
    (320 samples) and receptive field (400 samples) are those of the real models. With ``folder``,
    it is also saved there with ``save_pretrained`` (loadable offline as ``source=folder``).

    Example
    -------
    >>> build_tiny_wavlm(num_layers=1).config.num_hidden_layers
    1
    """
    if norm not in ("layer", "group"):
        raise ValueError(f"norm must be 'layer' or 'group', got {norm!r}")
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=2 * hidden_size, conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_buckets=32, max_bucket_distance=100,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer", hidden_dropout=dropout, attention_dropout=dropout,
        activation_dropout=dropout, feat_proj_dropout=dropout, layerdrop=dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WavLMModel(config).eval()
    if folder is not None:
        model.save_pretrained(str(folder))
    return model


class SSLFeatureExtractor(FrameFeatureExtractor):
    """Frozen SSL speech model: ``[B, T]`` 16 kHz waveforms -> frame features (see module docstring).

    Arguments
    ---------
    source : str, Path or nn.Module
        Hub id (default ``microsoft/wavlm-base-plus``; needs network once), a local folder written by
        ``save_pretrained``, or an already built transformers model (frozen in place).
    layers : "last", int, list of int or "average"
        ``"last"``: the model's ``last_hidden_state``; ``k``: ``hidden_states[k]`` as transformers
        returns it (0 = input of the first transformer layer, ``num_layers`` = output of the last;
        negative indices count from the end; note that for pre-LN models transformers 5 returns the
        last one *before* the final LayerNorm, which ``"last"`` includes); a list: those, stacked;
        ``"average"``: the unweighted mean of all ``num_layers + 1`` hidden states.
    normalize_input : bool
        Zero mean, unit variance per utterance over its valid samples.
    sample_rate : int
        Rate of the audio you will pass; must be 16000 (resample first, e.g. ``sb_mal.audio.resample``).
    cache_dir, local_files_only
        Passed to :func:`load_ssl_model`.
    attention_mask : bool, optional
        Pass an attention mask for padded batches; default: only for ``feat_extract_norm="layer"``.
    per_item : bool
        Run each item alone at its own length (exact for any model; slower).

    Example
    -------
    >>> ext = SSLFeatureExtractor(build_tiny_wavlm(), layers=[0, -1])
    >>> wav = torch.randn(2, 16000, requires_grad=True)
    >>> feats, frames = ext(wav, torch.tensor([1.0, 0.5]))
    >>> tuple(feats.shape), frames.tolist(), ext.frame_hop, ext.receptive
    ((2, 2, 49, 64), [49, 24], 320, 400)
    >>> feats.sum().backward()
    >>> bool(wav.grad.abs().sum() > 0), any(p.grad is not None for p in ext.model.parameters())
    (True, False)
    """

    def __init__(self, source: str | Path | nn.Module = DEFAULT_SSL_SOURCE,
                 layers: str | int | Sequence[int] = "last", normalize_input: bool = True,
                 sample_rate: int = SSL_SAMPLE_RATE, cache_dir: str | Path | None = None,
                 local_files_only: bool | None = None, attention_mask: bool | None = None,
                 per_item: bool = False):
        super().__init__()
        if int(sample_rate) != SSL_SAMPLE_RATE:
            raise ValueError(f"SSLFeatureExtractor: sample_rate={sample_rate}, but SSL speech models expect "
                             f"{SSL_SAMPLE_RATE} Hz input; resample the audio to 16 kHz first "
                             "(sb_mal.audio.resample)")
        model = source if isinstance(source, nn.Module) else load_ssl_model(source, cache_dir, local_files_only)
        config = getattr(model, "config", None)
        if not hasattr(model, "_get_feat_extract_output_lengths") or not hasattr(config, "conv_stride"):
            raise TypeError(f"SSL model from {_name(source)} ({type(model).__name__}) is not a wav2vec2-style "
                            "speech model (no convolutional feature encoder); use WavLM, HuBERT or wav2vec 2.0")
        if getattr(config, "add_adapter", False):
            raise ValueError(f"SSL model from {_name(source)} has an adapter (config.add_adapter=True), which "
                             "changes the frame rate; use the plain pretrained encoder")
        # Kept outside nn.Module's registry: no parameters()/state_dict() entries (see module docstring).
        self.freeze("_ssl", model.float(), in_state_dict=False)
        self.source = _name(source)
        self.num_layers = int(config.num_hidden_layers)
        self.num_hidden_states = self.num_layers + 1
        self.layers = self._parse_layers(layers)
        self.normalize_input = bool(normalize_input)
        self.sample_rate = SSL_SAMPLE_RATE
        norm = getattr(config, "feat_extract_norm", "layer")
        self.uses_attention_mask = (norm == "layer") if attention_mask is None else bool(attention_mask)
        self.per_item = bool(per_item)
        self.frame_hop = int(math.prod(config.conv_stride))
        self.receptive = 1 + sum((k - 1) * math.prod(config.conv_stride[:i]) for i, k in enumerate(config.conv_kernel))
        self.feature_dim = int(config.hidden_size)

    @property
    def model(self) -> nn.Module:
        """The wrapped (frozen) transformers model."""
        return self._ssl

    def frames(self, samples: int | torch.Tensor) -> int | torch.Tensor:
        """Valid frames for ``samples`` valid input samples (0 below the receptive field)."""
        out = self._ssl._get_feat_extract_output_lengths(torch.as_tensor(samples)).clamp(min=0)
        return out.long() if isinstance(samples, torch.Tensor) else int(out)

    def extra_repr(self) -> str:
        return (f"source={self.source!r}, layers={self.layers!r}, normalize_input={self.normalize_input}, "
                f"attention_mask={self.uses_attention_mask}, per_item={self.per_item}")

    # -- features -------------------------------------------------------------------------------------
    def _encode(self, wav, counts, padded):
        if self.per_item and padded:
            # an item shorter than the receptive field has 0 frames: run it on a minimal slice
            rows = [self._run(wav[i:i + 1, : max(int(counts[i]), self.receptive)], None) for i in range(wav.shape[0])]
            width = int(self.frames(wav.shape[1]))
            return torch.stack([nn.functional.pad(r[..., 0, :, :], (0, 0, 0, width - r.shape[-2])) for r in rows],
                               dim=-3)
        return self._run(wav, counts if padded and self.uses_attention_mask else None)

    def _run(self, wav: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
        """Selected layers as ``[L, B, frames, D]`` (L = 1 unless a list of layers was asked for)."""
        kwargs: dict = {}
        if counts is not None:
            kwargs["attention_mask"] = (torch.arange(wav.shape[1], device=wav.device)[None, :]
                                        < counts[:, None]).long()
        need_hidden = self.layers != "last"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask and attn_mask.*")
            out = self._ssl(wav, output_hidden_states=need_hidden, **kwargs)
        return self._select(out.hidden_states, out.last_hidden_state)


def _name(source) -> str:
    if isinstance(source, nn.Module):
        return getattr(getattr(source, "config", None), "_name_or_path", "") or type(source).__name__
    return str(source)
