"""Metric scores mapped to [0, 1] targets for metric discriminators (MetricGAN, MetricGAN-OKD).

One place for every normalisation (docs/design.md, "MetricGAN-OKD"):

=============  ==========================================================  ==================
metric         mapping                                                     clean vs clean
=============  ==========================================================  ==================
pesq           ``"sigmoid"``: 1 / (1 + exp(-1.5 (x - 2.5)))  (OKD code)      1.0 (by definition)
               ``"linear"``: (x - 1) / 3.5, clipped to [0, 1]
csig/cbak/covl (x - 1) / 4                                                  1.0
stoi/estoi     x (already in [0, 1])                                        1.0
si_sdr         1 / (1 + exp(-x / 10))  (our choice: 0 dB -> 0.5, 20 dB -> 0.88)  1.0
siib           x / 1335.8 b/s (SIIB^Gauss of clean vs clean), clipped        1.0
haspi          x (already in [0, 1])                                        1.0
=============  ==========================================================  ==================

The discriminator learns to predict these values; the generator is pushed towards 1.

Example
-------
>>> round(normalize_score("pesq", 2.5), 3), round(normalize_score("pesq", 4.5, "linear"), 3)
(0.5, 1.0)
>>> normalize_score("csig", 3.0)
0.5
"""

from __future__ import annotations

import math

__all__ = ["TARGET_METRICS", "normalize_score", "normalize_scores"]

#: Metrics a discriminator can be trained to predict.
TARGET_METRICS = ("pesq", "csig", "cbak", "covl", "stoi", "estoi", "si_sdr", "siib", "haspi")


def normalize_score(metric: str, value: float, pesq_mapping: str = "sigmoid") -> float:
    """Map a raw metric value to [0, 1]; NaN stays NaN (a failed metric)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if metric == "pesq":
        if pesq_mapping == "sigmoid":
            return 1.0 / (1.0 + math.exp(-1.5 * (value - 2.5)))
        if pesq_mapping == "linear":
            return min(1.0, max(0.0, (value - 1.0) / 3.5))
        raise ValueError(f"pesq_mapping must be 'sigmoid' or 'linear', got {pesq_mapping!r}")
    if metric in ("csig", "cbak", "covl"):
        return min(1.0, max(0.0, (value - 1.0) / 4.0))
    if metric in ("stoi", "estoi", "haspi"):
        return min(1.0, max(0.0, float(value)))
    if metric == "si_sdr":
        return 1.0 / (1.0 + math.exp(-value / 10.0))
    if metric == "siib":
        from sb_mal.metrics.siib import SIIB_MAX

        return min(1.0, max(0.0, float(value) / SIIB_MAX))
    raise ValueError(f"no target normalisation for metric {metric!r}; choose from {TARGET_METRICS}")


def normalize_scores(metrics, row: dict, pesq_mapping: str = "sigmoid") -> list[float]:
    """Normalised targets of ``metrics`` from a row of raw scores (e.g. an EvalResult row)."""
    return [normalize_score(m, row.get(m, math.nan), pesq_mapping) for m in metrics]
