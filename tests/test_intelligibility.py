"""Intelligibility metrics: SIIB^Gauss (the reference value, properties on real speech, failure
handling, CLI) and HASPI v2 through the Clarity tools."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from conftest import link_pairs
from sb_mal.cli import main
from sb_mal.metrics import evaluate
from sb_mal.metrics.siib import SIIB_MAX, siib_gauss
from sb_mal.metrics.targets import normalize_score

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def long_pair(devset_test_pairs):
    """The first 12 devset test pairs concatenated (~47 s: a full-rank stacked covariance)."""
    clean = np.concatenate([sf.read(c)[0] for _, _, c in devset_test_pairs[:12]])
    noisy = np.concatenate([sf.read(n)[0] for _, n, _ in devset_test_pairs[:12]])
    return clean, noisy


def test_matches_the_reference_implementation(long_pair):
    clean, noisy = long_pair
    # 231.41 b/s: SIIB_Gauss of the authors' reference code (the pySIIB port of their MATLAB,
    # SIIB(x, y, 16000, gauss=True)) on this very stimulus
    assert siib_gauss(clean, noisy) == pytest.approx(231.41, abs=0.01)


def test_clean_is_the_maximum_and_independent_noise_is_near_zero(long_pair, devset_test_pairs):
    clean, _ = long_pair
    assert SIIB_MAX == pytest.approx(1335.76, abs=0.01)
    assert siib_gauss(clean, clean) == pytest.approx(SIIB_MAX)
    short = sf.read(devset_test_pairs[0][2])[0]  # a 3.5 s utterance: rank-deficient, still the maximum
    assert siib_gauss(short, short) == pytest.approx(SIIB_MAX)
    noise = np.random.default_rng(0).standard_normal(clean.size)
    assert siib_gauss(clean, noise) < 0.02 * SIIB_MAX
    assert normalize_score("siib", SIIB_MAX) == 1.0 and normalize_score("siib", 0.0) == 0.0


def test_monotone_in_snr(long_pair):
    clean, _ = long_pair
    noise = np.random.default_rng(1).standard_normal(clean.size) * clean.std()
    values = [siib_gauss(clean, clean + noise * 10 ** (-snr / 20)) for snr in (-10, -5, 0, 5, 10, 20)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    # both signals are divided by the reference's standard deviation: a common gain changes nothing
    assert siib_gauss(3 * clean, 3 * (clean + noise)) == pytest.approx(siib_gauss(clean, clean + noise), rel=1e-9)


def test_too_short_silent_or_mismatched_is_an_error():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="active speech"):
        siib_gauss(rng.standard_normal(8000), rng.standard_normal(8000))  # 0.5 s
    with pytest.raises(ValueError, match="silent"):
        siib_gauss(np.zeros(32000), rng.standard_normal(32000))
    with pytest.raises(ValueError, match="lengths differ"):
        siib_gauss(np.ones(100), np.ones(50))
    speech = rng.standard_normal(48000)
    for bad in (np.nan, np.inf):
        degraded = speech.copy()
        degraded[1000] = bad
        with pytest.raises(ValueError, match="degraded signal contains NaN or Inf"):
            siib_gauss(speech, degraded)
    with pytest.raises(ValueError, match="one channel"):
        siib_gauss(np.stack([speech, speech], 1), np.stack([speech, speech], 1))


def test_pool_gives_nan_with_a_warning_never_a_crash(devset_test_pairs, tmp_path):
    _, noisy, clean = devset_test_pairs[0]
    short_clean, short_noisy = tmp_path / "c.wav", tmp_path / "n.wav"
    c, rate = sf.read(clean)
    sf.write(short_clean, c[: rate // 2], rate)  # 0.5 s: too short for SIIB
    sf.write(short_noisy, sf.read(noisy)[0][: rate // 2], rate)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(rate), rate)
    result = evaluate([noisy, str(short_noisy), str(silent)], [clean, str(short_clean), str(silent)],
                      metrics=["siib", "stoi"], n_jobs=0, ids=["ok", "short", "silent"])
    rows = {r["id"]: r for r in result.rows}
    assert 0 < rows["ok"]["siib"] < SIIB_MAX
    assert math.isnan(rows["short"]["siib"]) and math.isnan(rows["silent"]["siib"])
    assert result.counts["siib"] == 1 and result.means["siib"] == pytest.approx(rows["ok"]["siib"])
    text = " ".join(f["message"] if isinstance(f, dict) else str(f) for f in result.failures)
    assert "siib" in text and "active speech" in text


def test_cli_evaluate_lists_and_computes_siib(devset_test_pairs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "siib" in capsys.readouterr().out
    link_pairs(devset_test_pairs[:2], tmp_path)
    out = tmp_path / "eval"
    assert main(["evaluate", "--clean", str(tmp_path / "clean"), "--noisy", str(tmp_path / "noisy"),
                 "--metrics", "intelligibility", "--jobs", "0", "-o", str(out)]) == 0
    means = json.loads((out / "summary.json").read_text())["noisy"]["means"]
    assert set(means) >= {"stoi", "estoi", "siib"} and 0 < means["siib"] < SIIB_MAX


def test_haspi_orders_clean_noisy_and_noise(devset_test_pairs):
    pytest.importorskip("clarity", reason="the haspi extra is not installed")
    from sb_mal.metrics.intrusive import haspi

    _, noisy_path, clean_path = devset_test_pairs[0]
    clean, rate = sf.read(clean_path)
    noisy, _ = sf.read(noisy_path)
    rng = np.random.default_rng(3)
    very_noisy = clean + 10 * (noisy - clean) + 0.3 * clean.std() * rng.standard_normal(clean.size)
    values = [haspi(clean, sig, rate) for sig in (clean, noisy, very_noisy, noisy - clean)]
    assert values[0] == pytest.approx(1.0, abs=1e-3)
    assert values[0] >= values[1] > values[2] > values[3] and values[3] < 0.1, values
    assert normalize_score("haspi", 0.7) == 0.7
