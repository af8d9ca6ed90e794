"""Speech quality metrics and a persistent worker pool to compute them.

PESQ (wide- and narrow-band), STOI, ESTOI, SI-SDR, segmental SNR, the Loizou composite measures
CSIG/CBAK/COVL and DNSMOS (SIG/BAK/OVRL/P.808). :func:`evaluate` scores a list of utterances in
parallel; a failing utterance gives NaN and a warning and is left out of the means.

This package imports no torch, so metric workers start quickly.
"""

from sb_mal.metrics.pool import MetricPool, MetricWorkerError, evaluate, get_pool
from sb_mal.metrics.registry import METRIC_GROUPS, METRICS, MissingDependencyError, check_dependencies, resolve_metrics
from sb_mal.metrics.scoring import score_utterance
from sb_mal.metrics.results import EvalResult, format_table

__all__ = [
    "METRICS",
    "METRIC_GROUPS",
    "EvalResult",
    "MetricPool",
    "MetricWorkerError",
    "MissingDependencyError",
    "check_dependencies",
    "evaluate",
    "format_table",
    "get_pool",
    "resolve_metrics",
    "score_utterance",
]
