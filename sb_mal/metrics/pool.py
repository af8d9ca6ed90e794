"""Evaluate many utterances with a persistent pool of metric worker processes.

Design
------
* One task = one utterance: every requested metric is computed for it in one worker, so PESQ is
  computed once even when CSIG/CBAK/COVL (which contain it) are also asked for.
* Workers are our own processes, each fed one task at a time through a pipe, so the parent
  always knows which utterance a worker is on and since when. A worker that exceeds ``timeout``
  is killed and replaced, and only that utterance becomes NaN. A worker that crashes is replaced
  the same way. Nothing is ever retried.
* Every worker says it is ready before it gets work. A worker that dies or stays silent while
  starting is an immediate :class:`MetricWorkerError` (the usual cause: a script that calls
  :func:`evaluate` at top level, without ``if __name__ == "__main__":``, which ``spawn``
  re-imports in every worker), never a loop of respawns.
* A metric that raises on one utterance (PESQ "no utterances detected", silence, too short) gives
  NaN for that metric and utterance plus a logged warning; means leave NaNs out.
* The pool is persistent: :func:`get_pool` keeps one per ``n_jobs`` for the life of the process
  (so validation every epoch does not pay the worker start-up again).
* Workers are started with the ``spawn`` method (safe next to torch threads) and import only
  numpy, scipy and the metric packages; ``n_jobs=0`` computes in the calling process (no
  timeout).
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as mp_wait

from sb_mal.metrics.registry import check_dependencies
from sb_mal.metrics.results import EvalResult
from sb_mal.metrics.scoring import score_utterance
from sb_mal.metrics.stream import ScoreStream

logger = logging.getLogger(__name__)

__all__ = ["MetricPool", "MetricWorkerError", "PendingEvaluation", "evaluate", "get_pool"]


class MetricWorkerError(RuntimeError):
    """Metric worker processes could not be started (the message says why and what to do)."""


_START_HINT = ("Metric workers are started with 'spawn', which imports your main script again in each worker: a "
               "script that calls sb_mal.metrics.evaluate (or trains) at top level must do it under "
               "`if __name__ == \"__main__\":`. Or pass n_jobs=0 to compute the metrics in this process.")

#: Every metric name the pool understands, in report order.


def _worker_main(conn) -> None:
    """Worker loop: say ready, then receive (key, enhanced, clean, rate, metrics), send (key, scores, problems)."""
    try:
        conn.send("ready")
    except (EOFError, OSError, BrokenPipeError):
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        key, enhanced, clean, rate, metrics = task
        try:
            scores, problems = score_utterance(enhanced, clean, rate, metrics)
        except BaseException:  # pragma: no cover - score_utterance does not raise
            scores, problems = {m: math.nan for m in metrics}, [traceback.format_exc(limit=2)]
        try:
            conn.send((key, scores, problems))
        except (EOFError, OSError, BrokenPipeError):
            return


class _Worker:
    def __init__(self, ctx):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.task = None  # (index, started_at)

    def kill(self):
        try:
            self.process.kill()
            self.process.join(timeout=5)
        finally:
            self.conn.close()

    def stop(self):
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class MetricPool:
    """A persistent set of metric workers.

    Arguments
    ---------
    n_jobs : int
        Number of worker processes; 0 computes in the calling process.
    timeout : float
        Seconds one utterance may take before its worker is killed and replaced.
    start_method : str
        multiprocessing start method for the workers (default ``spawn``).

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.standard_normal(16000) * 0.1
    >>> with MetricPool(n_jobs=0) as pool:
    ...     result = pool.evaluate([clean], [clean], 16000, metrics=["si_sdr"])
    >>> result.means["si_sdr"] > 50
    True
    """

    #: seconds a new worker may take to import its packages and say it is ready
    start_timeout = 120.0

    def __init__(self, n_jobs: int = 2, timeout: float = 120.0, start_method: str = "spawn"):
        if n_jobs < 0:
            raise ValueError(f"n_jobs must be >= 0, got {n_jobs}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.n_jobs = int(n_jobs)
        self.timeout = float(timeout)
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def _ensure_workers(self):
        self._workers = [w for w in self._workers if w.process.is_alive()]
        fresh = [_Worker(self._ctx) for _ in range(self.n_jobs - len(self._workers))]
        self._await_ready(fresh)
        self._workers.extend(fresh)

    def _await_ready(self, workers: list[_Worker]) -> None:
        """Wait for every new worker's ready message; a worker that dies or stays silent is an error."""
        waiting = {w.conn: w for w in workers}
        deadline = time.monotonic() + self.start_timeout
        try:
            while waiting:
                ready = mp_wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise MetricWorkerError(f"{len(waiting)} metric worker process(es) did not start within "
                                            f"{self.start_timeout:.0f} s. {_START_HINT}")
                for conn in ready:
                    worker = waiting.pop(conn)
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        message = None
                    if message != "ready":
                        worker.process.join(timeout=5)
                        raise MetricWorkerError(f"a metric worker process exited while starting (exit code "
                                                f"{worker.process.exitcode}). {_START_HINT}")
        except BaseException:
            for worker in workers:
                worker.kill()
            raise

    def close(self):
        """Stop all workers."""
        for w in self._workers:
            w.stop()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- work --------------------------------------------------------------------------------
    def evaluate(
        self,
        enhanced: Sequence,
        clean: Sequence | None,
        sample_rate: int = 16000,
        metrics: str | Sequence[str] = "intrusive",
        ids: Sequence[str] | None = None,
        progress: bool = False,
        desc: str = "metrics",
        bar=None,
        on_result: Callable[[int, dict, list], None] | None = None,
    ) -> EvalResult:
        """Score lists of utterances (arrays, tensors or file paths).

        Arguments
        ---------
        enhanced : sequence
            Processed signals.
        clean : sequence or None
            References, same order (None for non-intrusive metrics only).
        sample_rate : int
            Rate of array inputs.
        metrics : str or sequence of str
            Metric names and/or groups (see :data:`METRICS`, :data:`METRIC_GROUPS`).
        ids : sequence of str, optional
            Utterance ids for the rows and warnings (default: running numbers).
        progress : bool
            Show a tqdm progress bar.
        bar : tqdm, optional
            A progress bar of the caller's to advance by one per utterance (e.g. one over several
            systems), instead of a bar of its own.
        on_result : callable, optional
            ``on_result(i, scores, problems)`` as soon as utterance ``i`` is scored, in the order
            they finish (e.g. to write rows as they come, so a stopped run keeps them).

        Returns
        -------
        EvalResult
            Per-utterance rows, NaN-free means, counts and the failures.
        """
        own_bar = None
        if progress and bar is None:
            from tqdm.auto import tqdm

            bar = own_bar = tqdm(total=len(enhanced), desc=desc, unit="utt")
        try:
            return self.submit(enhanced, clean, sample_rate, metrics, ids, bar=bar, on_result=on_result).result()
        finally:
            if own_bar is not None:
                own_bar.close()

    def submit(self, enhanced: Sequence, clean: Sequence | None, sample_rate: int = 16000,
               metrics: str | Sequence[str] = "intrusive", ids: Sequence[str] | None = None, bar=None,
               on_result: Callable[[int, dict, list], None] | None = None) -> PendingEvaluation:
        """Start scoring (arguments as :meth:`evaluate`) and return at once: the workers score while
        the caller works, :meth:`PendingEvaluation.poll` (cheap, never waits) hands them the next
        utterances, :meth:`PendingEvaluation.result` waits for the rest. The result is the one
        :meth:`evaluate` gives. Until it is taken the pool's workers belong to this evaluation: start
        no other on the same pool in the meantime."""
        return PendingEvaluation(self, enhanced, clean, sample_rate, metrics, ids, bar, on_result)

    def _replace(self, worker: _Worker) -> _Worker:
        """A started, ready worker in place of ``worker`` (MetricWorkerError if it cannot start)."""
        self._workers = [w for w in self._workers if w is not worker]
        fresh = _Worker(self._ctx)
        self._await_ready([fresh])
        self._workers.append(fresh)
        return fresh


class PendingEvaluation:
    """An evaluation started by :meth:`MetricPool.submit` (see there)."""

    def __init__(self, pool: MetricPool, enhanced, clean, sample_rate, metrics, ids, bar, on_result):
        self.names = check_dependencies(metrics)
        n = len(enhanced)
        if clean is not None and len(clean) != n:
            raise ValueError(f"got {n} enhanced but {len(clean)} clean utterances")
        self.ids = [str(i) for i in (ids if ids is not None else range(n))]
        if len(self.ids) != n:
            raise ValueError(f"got {len(self.ids)} ids for {n} utterances")
        self._scores: list[dict | None] = [None] * n
        self._problems: list[list[str]] = [[] for _ in range(n)]
        self._bar, self._on_result = bar, on_result
        self._inputs = (enhanced, clean, int(sample_rate))
        self._result: EvalResult | None = None
        self._stream = None
        if pool.n_jobs > 0:
            feed = ((i, enhanced[i], clean[i] if clean is not None else None) for i in range(n))
            self._stream = ScoreStream(pool, feed, sample_rate, self.names, names=self.names)
            self._stream.poll()  # the workers start at once

    def _done(self, i: int, scores: dict, msgs: list) -> None:
        self._scores[i], self._problems[i] = scores, list(msgs)
        if self._bar is not None:
            self._bar.update(1)
        if self._on_result is not None:
            self._on_result(i, scores, self._problems[i])

    def poll(self) -> None:
        """Hand idle workers their next utterances; never waits (nothing with ``n_jobs=0``)."""
        if self._stream is not None and self._result is None:
            self._stream.poll()

    def cancel(self) -> None:
        """Give the pool back without the scores (its workers still busy are replaced)."""
        if self._stream is not None and self._result is None:
            self._stream.abandon()
        self._stream = None
        self._inputs = None

    def scored(self) -> int:
        """Utterances scored so far (without waiting)."""
        self.poll()
        return sum(s is not None for s in self._scores) + (self._stream.ready if self._stream is not None else 0)

    def result(self) -> EvalResult:
        """The scores, waiting for those still being computed (``n_jobs=0``: computed now)."""
        if self._result is None:
            enhanced, clean, rate = self._inputs
            if self._stream is None:
                for i in range(len(enhanced)):
                    self._done(i, *score_utterance(enhanced[i], clean[i] if clean is not None else None, rate,
                                                   self.names))
            else:
                self._stream.drain(self._done)
            failures = []
            for uid, msgs in zip(self.ids, self._problems):
                for msg in msgs:
                    logger.warning("metrics: utterance %s: %s", uid, msg)
                    failures.append((uid, msg))
            self._result = EvalResult.from_rows(self.ids, self._scores, self.names, failures)
            self._inputs = None
        return self._result


_POOLS: dict[tuple[int, float], MetricPool] = {}


def get_pool(n_jobs: int = 2, timeout: float = 120.0) -> MetricPool:
    """The process-wide persistent pool for ``(n_jobs, timeout)`` (created on first use)."""
    key = (int(n_jobs), float(timeout))
    if key not in _POOLS:
        _POOLS[key] = MetricPool(n_jobs=n_jobs, timeout=timeout)
    return _POOLS[key]


@atexit.register
def _close_pools():  # pragma: no cover - runs at interpreter exit
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def evaluate(
    enhanced: Sequence,
    clean: Sequence | None,
    sample_rate: int = 16000,
    metrics: str | Sequence[str] = "intrusive",
    n_jobs: int = 2,
    ids: Sequence[str] | None = None,
    timeout: float = 120.0,
    progress: bool = False,
    bar=None,
    on_result: Callable[[int, dict, list], None] | None = None,
) -> EvalResult:
    """Score utterances with the persistent pool of ``n_jobs`` workers.

    See :meth:`MetricPool.evaluate`. A failing utterance gives NaN and a warning and is left out
    of the means.

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(1).standard_normal(8000) * 0.1
    >>> evaluate([x], [x], 16000, metrics=["si_sdr"], n_jobs=0).counts["si_sdr"]
    1
    """
    pool = MetricPool(n_jobs=0) if n_jobs == 0 else get_pool(n_jobs, timeout)
    return pool.evaluate(enhanced, clean, sample_rate, metrics, ids=ids, progress=progress, bar=bar,
                         on_result=on_result)
