"""Run a SpeechBrain recipe script with its stages timed into the run's own ``log.txt``.

Usage: python benchmarks/_stage_clock.py [--probe module:Class.method ...] TRAIN_PY [recipe arguments...]

The script runs as ``python TRAIN_PY ...`` would (``__main__``, its folder first on ``sys.path``), with
three kinds of timers around SpeechBrain's ``Brain``, whatever the recipe's subclass overrides:

- ``Brain._fit_train`` and ``Brain._fit_valid`` (the training and validation stage of an epoch; a
  recipe that calls ``fit`` inside a stage, as SpeechBrain's MetricGAN+ recipe does for its
  discriminator, gives nested stages, told apart by ``depth`` and the Brain's ``sub_stage``);
- the Brain's ``on_stage_start`` and ``on_stage_end`` (where the MetricGAN recipes run their
  discriminator phases and score validation);
- ``--probe`` callables (e.g. ``sb_mal.brains.okd_discriminator:DiscriminatorPhase.update``): their
  time and the length of their first list argument (else of their list result). A probe that
  does not exist is logged as missing and the run goes on.

Each timer writes one line through the ``logging`` module when its call ends:
``stage-clock {"what": ..., "depth": ..., "epoch": ..., "seconds": ...}`` (the epoch is the one of the
outermost training stage). The timers add a few microseconds per call and change nothing else.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import runpy
import sys
import time
from pathlib import Path

LOG = logging.getLogger("stage_clock")
PREFIX = "stage-clock "


class _Clock:
    depth = 0
    epoch = None
    missing: tuple[str, ...] = ()  # probes not found, logged with the first event (once the run's log exists)


def _emit(**event) -> None:
    missing, _Clock.missing = _Clock.missing, ()
    for name in missing:
        LOG.warning(PREFIX + json.dumps({"what": "probe missing", "name": name}))
    LOG.info(PREFIX + json.dumps(event))


def _sub(brain) -> str | None:
    sub = getattr(brain, "sub_stage", None)
    return getattr(sub, "name", None if sub is None else str(sub))


def _items(args, result) -> int | None:
    for arg in args:
        if isinstance(arg, list):
            return len(arg)
    return len(result) if isinstance(result, list) else None


def _time_stage(name: str, original):
    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        if name == "_fit_train" and _Clock.depth == 0:
            _Clock.epoch = kwargs.get("epoch", args[1] if len(args) > 1 else None)
        _Clock.depth += 1
        sub, start = _sub(self), time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _emit(what=name, depth=_Clock.depth, epoch=_Clock.epoch, sub=sub, seconds=time.perf_counter() - start)
            _Clock.depth -= 1

    return timed


def _time_hook(name: str, bound, brain):
    def timed(stage, *args, **kwargs):
        sub, start = _sub(brain), time.perf_counter()
        try:
            return bound(stage, *args, **kwargs)
        finally:
            _emit(what=name, stage=getattr(stage, "name", str(stage)), depth=_Clock.depth, epoch=_Clock.epoch, sub=sub,
                  seconds=time.perf_counter() - start)

    return timed


def _time_probe(label: str, original):
    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        _emit(what="probe", name=label, depth=_Clock.depth, epoch=_Clock.epoch, items=_items(args, result),
              seconds=time.perf_counter() - start)
        return result

    return timed


def install(probes=()) -> list[str]:
    """Put the timers in place; returns the probes that could not be found."""
    from speechbrain.core import Brain

    for name in ("_fit_train", "_fit_valid"):
        if not hasattr(Brain, name):
            raise SystemExit(f"_stage_clock: speechbrain.core.Brain has no {name} (another SpeechBrain version?)")
        setattr(Brain, name, _time_stage(name, getattr(Brain, name)))
    init = Brain.__init__

    @functools.wraps(init)
    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for name in ("on_stage_start", "on_stage_end"):  # on the instance: whatever a subclass overrides
            setattr(self, name, _time_hook(name, getattr(self, name), self))

    Brain.__init__ = timed_init
    missing = []
    for probe in probes:
        module_name, _, qualname = probe.partition(":")
        try:
            owner = importlib.import_module(module_name)
            *path, attr = qualname.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, attr)
        except (ImportError, AttributeError, ValueError):
            missing.append(probe)
            continue
        setattr(owner, attr, _time_probe(probe, original))
    return missing


def read_events(log_txt: Path) -> list[dict]:
    """The timer events of a run's ``log.txt``, in the order their calls ended."""
    events = []
    for line in Path(log_txt).read_text(encoding="utf-8", errors="replace").splitlines():
        at = line.find(PREFIX)
        if at >= 0:
            events.append(json.loads(line[at + len(PREFIX):]))
    return events


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", action="append", default=[],
                        help="module:Qualified.name of a callable to time (repeatable)")
    parser.add_argument("script", help="the recipe's train.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the recipe's own arguments")
    args = parser.parse_args(argv)
    _Clock.missing = tuple(install(args.probe))
    for probe in _Clock.missing:
        print(f"_stage_clock: probe {probe} not found; the run goes on without it", file=sys.stderr)
    script = Path(args.script).resolve()
    sys.argv = [str(script), *args.args]
    sys.path[0] = str(script.parent)  # as `python TRAIN_PY` would have it
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
