"""Model folders in SpeechBrain's own hub layouts, with random weights (stand-ins for hub models offline)."""

from __future__ import annotations

from pathlib import Path

import torch

SPECTRAL_MASK_YAML = """# SpectralMaskEnhancement layout (as speechbrain/metricgan-plus-voicebank)
{rate_line}
compute_stft: !new:speechbrain.processing.features.STFT
    sample_rate: 16000
    win_length: 32
    hop_length: 16
    n_fft: 512
    window_fn: !name:torch.hamming_window
compute_istft: !new:speechbrain.processing.features.ISTFT
    sample_rate: 16000
    win_length: 32
    hop_length: 16
    window_fn: !name:torch.hamming_window
spectral_magnitude: !name:speechbrain.processing.features.spectral_magnitude
    power: 0.5
resynth: !name:speechbrain.processing.signal_processing.resynthesize
    stft: !ref <compute_stft>
    istft: !ref <compute_istft>
    normalize_wavs: False
enhance_model: !new:speechbrain.lobes.models.MetricGAN.EnhancementGenerator
modules:
    enhance_model: !ref <enhance_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        enhance_model: !ref <enhance_model>
"""

WAVEFORM_YAML = """# WaveformEnhancement layout (as speechbrain/mtl-mimic-voicebank), a small EnhanceResnet
sample_rate: 16000
enhance_model: !new:speechbrain.lobes.models.EnhanceResnet.EnhanceResnet
    channel_counts: [8, 8]
    dense_count: 1
    dense_nodes: 32
modules:
    enhance_model: !ref <enhance_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        enhance_model: !ref <enhance_model>
"""


def _write(folder: Path, text: str, seed: int) -> Path:
    from hyperpyyaml import load_hyperpyyaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(text)
    torch.manual_seed(seed)
    model = load_hyperpyyaml(text)["enhance_model"]
    with torch.no_grad():  # random weights, away from the initialisation
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(model.state_dict(), folder / "enhance_model.ckpt")
    return folder


def spectral_mask_folder(folder: Path, with_sample_rate: bool = True, seed: int = 0) -> Path:
    """A MetricGAN+-style SpectralMaskEnhancement folder (EnhancementGenerator, random weights)."""
    return _write(folder, SPECTRAL_MASK_YAML.format(rate_line="sample_rate: 16000" if with_sample_rate else ""), seed)


def waveform_folder(folder: Path, seed: int = 0) -> Path:
    """A WaveformEnhancement folder (a small EnhanceResnet, random weights)."""
    return _write(folder, WAVEFORM_YAML, seed)
