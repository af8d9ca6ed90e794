"""Every test and doctest writes its temporary files inside its own tmp_path.

``tempfile`` (``mkdtemp``, ``TemporaryDirectory``, SpeechBrain's debug checkpoints) and the
subprocesses a test starts (``$TMPDIR``) are pointed at the test's ``tmp_path``, so a run leaves
nothing behind outside pytest's own temporary folders.
"""

import tempfile

import pytest


@pytest.fixture(autouse=True)
def _temporary_files_in_tmp_path(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    yield
