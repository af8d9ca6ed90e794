"""Score utterances as they are produced: the pool works while the caller keeps working.

A :class:`ScoreStream` pulls ``(key, processed, reference)`` items from a feed (any iterable,
typically a generator that enhances the next utterance when asked) whenever a worker of a
:class:`~sb_mal.metrics.pool.MetricPool` is idle, and hands each result back by its key. The
caller asks for the result it needs next (:meth:`ScoreStream.get`); while it waits the stream keeps
every worker busy, and between two requests (e.g. a discriminator update on the result just
received) the workers go on with the items already sent. With ``n_jobs=0`` an item is scored in
the calling process when its result is asked for.

Failures follow the pool's rules: a worker past its timeout is killed and replaced, a crashed
worker is replaced, and only that item becomes NaN with a message; nothing is retried except an
item whose worker died before taking it (sent once more).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable
from multiprocessing.connection import wait as mp_wait

from sb_mal.metrics.registry import check_dependencies
from sb_mal.metrics.scoring import score_utterance

__all__ = ["ScoreStream"]


class ScoreStream:
    """Results of ``feed``'s items, scored by ``pool`` while the caller works (module docstring).

    Example
    -------
    >>> import numpy as np
    >>> from sb_mal.metrics.pool import MetricPool
    >>> x = np.random.default_rng(0).standard_normal(8000) * 0.1
    >>> feed = ((k, x * gain, x) for k, gain in (("a", 1.0), ("b", 0.5)))
    >>> stream = ScoreStream(MetricPool(n_jobs=0), feed, 16000, ["si_sdr"])
    >>> scores, problems = stream.get("b")
    >>> round(scores["si_sdr"]) > 50, problems
    (True, [])
    """

    def __init__(self, pool, feed: Iterable, rate: int, metrics, names: list[str] | None = None):
        self.pool = pool
        self.rate = int(rate)
        self.names = names if names is not None else check_dependencies(metrics)
        self._feed = iter(feed)
        self._exhausted = False
        self._ready: dict = {}  # key -> (scores, problems), not yet asked for
        self._items: dict = {}  # key -> (processed, reference) of the items sent and not answered
        self._resend: list = []  # keys whose worker died before taking them
        self._resent: set = set()
        self._busy: dict = {}  # conn -> worker (worker.task = (key, started))
        self._idle: list = []
        if pool.n_jobs > 0:
            pool._ensure_workers()
            self._idle = list(pool._workers)

    # -- results -----------------------------------------------------------------------------
    def get(self, key: Hashable) -> tuple[dict, list]:
        """``(scores, problems)`` of the item ``key``, waiting for it if needed (KeyError if the feed
        ends without it)."""
        while key not in self._ready:
            if not self._advance(block=True):
                raise KeyError(f"no item {key!r} in the feed")
        return self._ready.pop(key)

    def poll(self) -> None:
        """Without waiting: take the results that are in and give idle workers the next items (the
        caller then goes back to its own work). Nothing happens with ``n_jobs=0``: the items are
        scored in this process by :meth:`get` or :meth:`drain`."""
        if self.pool.n_jobs > 0:
            self._advance(block=False)

    def abandon(self) -> None:
        """Stop: the workers still scoring an item of this stream are replaced, so that no late answer
        reaches a later stream on the same pool."""
        for conn, worker in list(self._busy.items()):
            self._busy.pop(conn)
            worker.kill()
            self.pool._replace(worker)
        self._exhausted, self._resend = True, []

    @property
    def ready(self) -> int:
        """Items scored and not yet handed out."""
        return len(self._ready)

    def drain(self, done: Callable[[Hashable, dict, list], None]) -> None:
        """Score every remaining item, calling ``done(key, scores, problems)`` as each finishes."""
        while True:
            for key in list(self._ready):
                done(key, *self._ready.pop(key))
            if not self._advance(block=True):
                break
        for key in list(self._ready):
            done(key, *self._ready.pop(key))

    # -- work --------------------------------------------------------------------------------
    def _next_item(self):
        if self._resend:
            key = self._resend.pop(0)
            return key, *self._items[key]
        if self._exhausted:
            return None
        try:
            key, processed, reference = next(self._feed)
        except StopIteration:
            self._exhausted = True
            return None
        return key, processed, reference

    def _advance(self, block: bool) -> bool:
        """Send work to idle workers, then take the results that are in (waiting for one if
        ``block``). False once the feed is exhausted and nothing is left in flight."""
        if self.pool.n_jobs == 0:
            item = self._next_item()
            if item is None:
                return False
            key, processed, reference = item
            self._ready[key] = score_utterance(processed, reference, self.rate, self.names)
            return True
        self._send()
        if not self._busy:
            return False
        now = time.monotonic()
        deadline = min(w.task[1] for w in self._busy.values()) + self.pool.timeout
        ready = mp_wait(list(self._busy), timeout=max(0.0, deadline - now) if block else 0.0)
        for conn in ready:
            worker = self._busy.pop(conn)
            key = worker.task[0]
            try:
                answered, scores, problems = conn.recv()
            except (EOFError, OSError):
                worker.kill()
                self._idle.append(self.pool._replace(worker))
                self._left_out(key, "metric worker crashed; utterance left out")
            else:
                worker.task = None
                self._idle.append(worker)
                self._items.pop(answered, None)
                self._ready[answered] = (scores, problems)
        now = time.monotonic()
        for conn, worker in list(self._busy.items()):
            key, started = worker.task
            if now - started >= self.pool.timeout:
                self._busy.pop(conn)
                worker.kill()
                self._idle.append(self.pool._replace(worker))
                self._left_out(key, f"timed out after {self.pool.timeout:.0f} s; worker replaced")
        self._send()
        return True

    def _send(self) -> None:
        while self._idle:
            item = self._next_item()
            if item is None:
                return
            key, processed, reference = item
            self._items[key] = (processed, reference)
            worker = self._idle.pop()
            try:
                worker.conn.send((key, processed, reference, self.rate, self.names))
            except (OSError, BrokenPipeError):
                worker.kill()
                self._idle.append(self.pool._replace(worker))
                if key in self._resent:
                    self._left_out(key, "two metric workers died before taking this utterance; left out")
                else:
                    self._resent.add(key)
                    self._resend.append(key)
                continue
            worker.task = (key, time.monotonic())
            self._busy[worker.conn] = worker

    def _left_out(self, key, why: str) -> None:
        self._items.pop(key, None)
        self._ready[key] = ({m: math.nan for m in self.names}, [why])
