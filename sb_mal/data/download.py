"""Corpus downloads that fail in one line: what could not be fetched, why, and the manual route.

The message says how to proceed offline in general terms; whoever runs the preparation names its
own switch: a recipe its YAML key (``--download=False``), ``sb-mal prepare`` its ``--no-download``
(:attr:`DownloadError.hint`).
"""

from __future__ import annotations

import logging
import os
import shutil

logger = logging.getLogger(__name__)

__all__ = ["DownloadError", "download_archive"]


class DownloadError(ConnectionError):
    """A corpus file could not be downloaded (names the URL, the cause, and where to put it by hand)."""

    def with_hint(self, hint: str) -> DownloadError:
        """The same error, its message ending with how the caller turns downloading off."""
        return DownloadError(f"{self}; then run again with {hint}")


def download_archive(url: str, archive: str, scratch: str, manual: str) -> None:
    """Download ``url`` to ``archive`` and unpack it into ``scratch`` (made afresh).

    ``manual`` says what to do by hand (e.g. "unzip it into /data/vb, giving /data/vb/<name>/").
    Any network or HTTP failure is a :class:`DownloadError`; ``scratch`` is removed then.
    """
    from speechbrain.utils import data_utils  # looked up at call time (tests replace it)

    shutil.rmtree(scratch, ignore_errors=True)
    logger.info("downloading %s", url)
    try:
        data_utils.download_file(url, archive, unpack=True, dest_unpack=scratch)
    except (OSError, ValueError) as err:  # offline, DNS, HTTP errors (urllib's are OSErrors)
        shutil.rmtree(scratch, ignore_errors=True)
        if os.path.exists(archive) and os.path.getsize(archive) == 0:
            os.unlink(archive)
        reason = " ".join(str(getattr(err, "reason", err)).split())[:200]
        raise DownloadError(f"cannot download {url} ({type(err).__name__}: {reason}); offline, download it by hand "
                            f"and {manual}") from err
