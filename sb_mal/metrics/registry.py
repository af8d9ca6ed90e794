"""The metrics sb_mal computes: names, groups, optional extras, and the rules shared by every scorer.

``METRICS`` lists every metric name; ``METRIC_GROUPS`` the names a user may give instead
(``intrusive``, ``composite``, ``dnsmos``, ...). :func:`resolve_metrics` expands groups and checks
names; :func:`check_dependencies` says, before any work, which optional extra a metric needs
(DNSMOS: ``pip install "sb_mal[dnsmos]"``). This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DNSMOS_METRICS", "INTRUSIVE_METRICS", "LENGTH_TOLERANCE", "METRICS", "METRIC_GROUPS", "METRIC_RATE", "MissingDependencyError", "OPTIONAL_METRICS",
           "SILENT_REFERENCE_DBFS", "check_dependencies", "resolve_metrics"]

METRICS = (
    "pesq",
    "pesq_nb",
    "stoi",
    "estoi",
    "si_sdr",
    "ssnr",
    "csig",
    "cbak",
    "covl",
    "siib",
    "haspi",
    "dnsmos_sig",
    "dnsmos_bak",
    "dnsmos_ovrl",
    "dnsmos_p808",
)
#: Metrics that compare with a clean reference (the same undefined-reference and length policy).
INTRUSIVE_METRICS = METRICS[:11]
DNSMOS_METRICS = METRICS[11:]
#: Names that expand to several metrics. SIIB^Gauss (meant for long or concatenated stimuli and
#: listening enhancement) and HASPI (an optional extra) are asked for by name or through
#: "intelligibility", not by "intrusive".
METRIC_GROUPS = {
    "intrusive": tuple(m for m in INTRUSIVE_METRICS if m not in ("siib", "haspi")),
    "intelligibility": ("stoi", "estoi", "siib"),
    "composite": ("csig", "cbak", "covl"),
    "dnsmos": DNSMOS_METRICS,
    "all": METRICS,
}
#: Rate every metric is computed at (inputs at other rates are resampled).
METRIC_RATE = 16000
#: A clean reference whose RMS is below this (dBFS) is silent or near-silent: every intrusive
#: metric is undefined on it (NaN), STOI/ESTOI included (pystoi returns 0 there, not an error).
SILENT_REFERENCE_DBFS = -80.0
#: Enhanced and clean lengths may differ by this fraction of the reference or these seconds,
#: whichever is larger (a model's frame hop, a codec's padding): both are trimmed to the shorter.
#: Beyond it the pair is not scored (NaN for the intrusive metrics, reported, left out of the means).
LENGTH_TOLERANCE = (0.01, 0.064)


#: Metrics that need an optional extra: metric -> (extra, the packages it installs).
OPTIONAL_METRICS = {**{m: ("dnsmos", ("onnxruntime", "speechmos")) for m in DNSMOS_METRICS}, "haspi": ("haspi", ("clarity",))}


class MissingDependencyError(ImportError):
    """A metric needs an optional extra that is not installed (the message gives the pip command)."""


def check_dependencies(metrics: str | Sequence[str], where: str = "") -> tuple[str, ...]:
    """Resolve ``metrics`` and check their optional packages are installed; returns the names.

    Called where a metric list is built (a Brain's hparams, the start of :func:`evaluate`), so a
    missing extra stops the run at its start instead of turning every score into NaN at its end.

    Example
    -------
    >>> check_dependencies(["pesq", "stoi"])
    ('pesq', 'stoi')
    """
    import importlib.util

    names = resolve_metrics(metrics)
    missing: dict[str, list[str]] = {}
    for name in names:
        extra, packages = OPTIONAL_METRICS.get(name, (None, ()))
        if any(importlib.util.find_spec(p) is None for p in packages):
            missing.setdefault(extra, []).append(name)
    if missing:
        extra, wanted = next(iter(missing.items()))
        packages = " and ".join(OPTIONAL_METRICS[wanted[0]][1])
        raise MissingDependencyError(
            f"{where + ': ' if where else ''}metric(s) {', '.join(wanted)} need the '{extra}' extra ({packages}), "
            f"which is not installed: pip install \"sb_mal[{extra}]\" (from a clone: pip install -e \".[{extra}]\"), "
            "or leave them out of the metric list")
    return names


def resolve_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """Expand group names and check metric names; keeps report order, drops duplicates.

    Example
    -------
    >>> resolve_metrics(["stoi", "composite"])
    ('stoi', 'csig', 'cbak', 'covl')
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    out: list[str] = []
    for name in metrics:
        key = name.lower()
        names = METRIC_GROUPS.get(key, (key,))
        for n in names:
            if n not in METRICS:
                raise ValueError(
                    f"unknown metric {name!r}; choose from {list(METRICS)} or groups {list(METRIC_GROUPS)}"
                )
            if n not in out:
                out.append(n)
    return tuple(out)
