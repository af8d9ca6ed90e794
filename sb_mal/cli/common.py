"""What the ``sb-mal`` commands share: the one-line error and SpeechBrain's log level."""

from __future__ import annotations

import argparse
import logging
import os

__all__ = ["CommandError", "quiet_speechbrain"]


class CommandError(Exception):
    """A command cannot go on: ``main`` prints ``error: <message>`` on one line and exits with 2."""


def quiet_speechbrain(args: argparse.Namespace) -> None:
    if args.verbose:
        return
    os.environ.setdefault("SB_LOG_LEVEL", "WARNING")  # loggers created later (before speechbrain's import)
    import speechbrain.utils.fetching  # noqa: F401  (the loggers that speak while loading a model)
    import speechbrain.utils.parameter_transfer  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("speechbrain"):
            logging.getLogger(name).setLevel(logging.WARNING)
