"""Reachability of the soft-DTW target under speed perturbation, through every frozen feature model.

Position-invariant fine-tuning speed-perturbs the *noisy input* by a factor f and compares the output with
the *unperturbed* clean speech under the soft-DTW SSL loss. A perfect enhancer then outputs the clean speech
perturbed by f. For the loss to be usable, that output must score below doing nothing (the untouched noisy
input). Measured on devset validation pairs (gamma 0.1, issue 24's review, 6 pairs, full length):

- FCPE: pitch-preserving stretch 0.08-0.10, resampling (pitch x f) 0.41-0.78, noisy input 0.28;
- Resemblyzer: stretch 0.006-0.012, noisy 0.026;
- random WavLM: every perturbation 0.51-0.55 against 0.33 for the noisy input, because its features are not
  shift-invariant below one frame: the clean speech delayed by 40 samples (2.5 ms) already costs 0.52.

(Numbers: ``python benchmarks/diagnostics.py pift``, the diagnostic_pift section of benchmarks/RESULTS.md.)
  Through a random WavLM the soft-DTW target is out of reach whatever the perturbation; the test states it.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sb_mal.audio import read_audio
from sb_mal.brains.pift import speed_perturb
from sb_mal.losses import SSLSoftDTWLoss
from sb_mal.models.extractors import build_frame_extractor

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

FACTORS = (0.8, 1.2)
SECONDS = 3.0


@pytest.fixture(scope="module")
def pairs(devset):
    """The first 3 devset validation pairs, 3 s each: (noisy, clean) [1, T]."""
    out = []
    for i in range(3):
        noisy, _ = read_audio(devset / f"pairs/valid/noisy/valid_00{i}.flac")
        clean, _ = read_audio(devset / f"pairs/valid/clean/valid_00{i}.flac")
        n = int(SECONDS * 16000)
        out.append((noisy[:n][None], clean[:n][None]))
    return out


def _source(name, tiny_wavlm_dir):
    if name == "torchfcpe":
        pytest.importorskip("torchfcpe", reason="the encoders extra is not installed")
    if name == "resemblyzer" and importlib.util.find_spec("resemblyzer") is None:
        pytest.skip("the encoders extra (Resemblyzer) is not installed")
    return str(tiny_wavlm_dir) if name == "wavlm_random" else name


def _mean(loss, pairs, fn):
    with torch.no_grad():
        return sum(float(loss(fn(noisy, clean), clean)) for noisy, clean in pairs) / len(pairs)


@pytest.mark.parametrize("name", ["torchfcpe", "resemblyzer", "wavlm_random"])
def test_perfect_output_of_the_stretched_input_beats_the_noisy_input(name, pairs, tiny_wavlm_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loss = SSLSoftDTWLoss(build_frame_extractor(_source(name, tiny_wavlm_dir), None))
    noisy = _mean(loss, pairs, lambda n, c: n)
    stretched = {f: _mean(loss, pairs, lambda n, c, f=f: speed_perturb(c, f)) for f in FACTORS}
    if name != "wavlm_random":
        assert all(v < noisy for v in stretched.values()), (noisy, stretched)
        return
    # random WavLM: out of reach, and not because of the stretch: a 2.5 ms delay alone costs more than noise
    delayed = _mean(loss, pairs, lambda n, c: torch.nn.functional.pad(c, (40, 0)))
    assert all(v > noisy for v in stretched.values()) and delayed > noisy, (noisy, stretched, delayed)


def test_resampling_puts_the_target_out_of_reach_through_fcpe(pairs):
    """The old speed perturbation (resampling: tempo and pitch) fails the check through the pitch model."""
    pytest.importorskip("torchfcpe", reason="the encoders extra is not installed")
    loss = SSLSoftDTWLoss(build_frame_extractor("torchfcpe", None))
    noisy = _mean(loss, pairs, lambda n, c: n)
    resampled = {f: _mean(loss, pairs, lambda n, c, f=f: speed_perturb(c, f, mode="resample")) for f in FACTORS}
    assert all(v > noisy for v in resampled.values()), (noisy, resampled)
