"""Self-consistency study: enhance k = 1..K times, feeding each output back as the next input.

A model that has learned what clean speech is should leave already enhanced speech alone; one
that has learned a fixed suppression keeps eating into the speech (harmonics fade, the spectrum
thins out). For each model and pass we score the output against the clean reference and keep
the audio of one utterance for a spectrogram grid (rows: passes, columns: models).

Outputs of :func:`iterate_models` (all written atomically under ``out_dir``):

``iterate_scores.csv``    one row per (model, pass): the metric means
``iterate_summary.json``  the same plus per-utterance failures
``iterate_spectrograms.png``  rows = input and passes 1..K, columns = models (one utterance)
``iterate_curves.png``    metric vs pass, one line per model
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ITERATE_METRICS", "iterate_models", "load_enhancers"]

DEFAULT_ITERATE_METRICS = ("pesq", "stoi", "dnsmos_ovrl", "dnsmos_sig")


def load_enhancers(sources: Mapping[str, str], device: str = "cpu", trust_code: bool = False) -> dict[str, Callable]:
    """``{name: source}`` (exported folders or hub ids) -> ``{name: wav [T] -> wav [T]}``.

    ``trust_code`` as in :meth:`sb_mal.inference.Enhancer.from_hparams`."""
    from sb_mal.inference import Enhancer

    out = {}
    for name, source in sources.items():
        enhancer = Enhancer.from_hparams(source=str(source), run_opts={"device": device}, trust_code=trust_code)

        def run(wav, _e=enhancer):
            with torch.no_grad():
                return _e.enhance_batch(torch.as_tensor(wav, dtype=torch.float32)[None])[0].cpu().numpy()

        out[name] = run
    return out


def iterate_models(
    models: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    noisy: Sequence[np.ndarray],
    clean: Sequence[np.ndarray],
    *,
    passes: int = 5,
    metrics: Sequence[str] = DEFAULT_ITERATE_METRICS,
    sample_rate: int = 16000,
    ids: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    figure_index: int = 0,
    n_jobs: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Run the study; returns one row per (model, pass) with metric means.

    Arguments
    ---------
    models : mapping name -> callable
        Each maps a 1-D waveform to its enhanced version (same rate); see :func:`load_enhancers`.
    noisy, clean : sequences of 1-D arrays
        Inputs and references at ``sample_rate``.
    passes : int
        K, the number of times each model is applied.
    metrics : sequence of str
        Metric names for :func:`sb_mal.metrics.evaluate`.
    out_dir : path, optional
        Where tables and figures go (nothing written when None); ``iterate_scores.csv`` is rewritten
        after every pass, so a stopped study keeps what it scored.
    progress : bool
        One progress bar over the whole study (enhancement and scoring of every pass), with its ETA.
    figure_index : int
        Which utterance the spectrogram grid shows.

    Example
    -------
    >>> halve = lambda w: 0.5 * w
    >>> x = np.random.default_rng(0).standard_normal(16000) * 0.1
    >>> rows = iterate_models({"halve": halve}, [x], [x], passes=2, metrics=["si_sdr"], n_jobs=0, progress=False)
    >>> [(r["model"], r["pass"]) for r in rows]
    [('input', 0), ('halve', 1), ('halve', 2)]
    """
    from sb_mal.metrics import evaluate

    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if len(noisy) != len(clean) or not noisy:
        raise ValueError(f"need the same non-zero number of noisy and clean signals, got {len(noisy)} and {len(clean)}")
    ids = [str(i) for i in (ids if ids is not None else range(len(noisy)))]
    if not 0 <= figure_index < len(noisy):
        raise ValueError(f"figure_index {figure_index} out of range for {len(noisy)} utterances")
    rows, failures = [], {}
    bar = None
    if progress:  # one bar over everything: the input's scores, then each model's passes (enhance + score)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(noisy) * (1 + 2 * passes * len(models)), desc="iterate: input", unit="step")
    try:
        base = evaluate(list(noisy), list(clean), sample_rate, metrics=list(metrics), n_jobs=n_jobs, ids=ids, bar=bar)
        rows.append({"model": "input", "pass": 0, **base.means})
        figure_rows = [[None] * len(models) for _ in range(passes + 1)]  # rows: input, pass 1..K
        for j, (name, enhance) in enumerate(models.items()):
            current = [np.asarray(x, dtype=np.float32) for x in noisy]
            figure_rows[0][j] = current[figure_index]
            for k in range(1, passes + 1):
                if bar is not None:
                    bar.set_description(f"iterate: {name} pass {k}/{passes}")
                enhanced = []
                for x in current:
                    enhanced.append(np.asarray(enhance(x), dtype=np.float32)[: len(x)])
                    if bar is not None:
                        bar.update(1)
                current = enhanced
                result = evaluate(current, list(clean), sample_rate, metrics=list(metrics), n_jobs=n_jobs, ids=ids,
                                  bar=bar)
                rows.append({"model": name, "pass": k, **result.means})
                failures[f"{name}/pass{k}"] = [{"id": i, "message": m} for i, m in result.failures]
                figure_rows[k][j] = current[figure_index]
                logger.info("%s pass %d: %s", name, k, ", ".join(f"{m}={result.means[m]:.3f}" for m in metrics))
                if out_dir is not None:  # what is scored so far survives a stop
                    _write_scores(Path(out_dir), rows, list(metrics))
    finally:
        if bar is not None:
            bar.close()
    if out_dir is not None:
        _write_outputs(Path(out_dir), rows, failures, figure_rows, list(models), list(metrics), passes, sample_rate,
                       ids[figure_index])
    return rows


def _write_scores(out: Path, rows, metrics) -> None:
    """``iterate_scores.csv``: one row per model and pass (rewritten after every pass)."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["model", "pass", *metrics])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in ("model", "pass", *metrics)})
    atomic_write_text(out / "iterate_scores.csv", buf.getvalue())


def _write_outputs(out: Path, rows, failures, figure_rows, names, metrics, passes, sample_rate, figure_id):
    from sb_mal.evaluation.plots import save_metric_curves, save_spectrogram_grid

    _write_scores(out, rows, metrics)
    clean_rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    atomic_write_text(out / "iterate_summary.json", json.dumps({"rows": clean_rows, "failures": failures}, indent=2) + "\n")
    save_spectrogram_grid(out / "iterate_spectrograms.png", figure_rows, ["input"] + [f"pass {k}" for k in range(1, passes + 1)],
                          names, sample_rate, title=f"Iterative enhancement of {figure_id}")
    save_metric_curves(out / "iterate_curves.png", rows, metrics)
