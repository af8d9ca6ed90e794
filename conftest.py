"""Every test and doctest writes its temporary files inside pytest's temporary folders.

``tempfile`` (``mkdtemp``, ``TemporaryDirectory``, SpeechBrain's debug checkpoints) and the
subprocesses a test starts (``$TMPDIR``) are pointed at a fresh folder from ``tmp_path_factory``
(beside the test's ``tmp_path``, which stays as the test made it), so a run leaves nothing behind
outside pytest's own temporary folders.
"""

import tempfile

import pytest


@pytest.fixture(autouse=True)
def _temporary_files_in_pytest_folders(tmp_path_factory, monkeypatch):
    scratch = tmp_path_factory.mktemp("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    yield
