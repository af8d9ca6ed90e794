"""Every test and doctest writes its temporary files inside pytest's temporary folders.

``tempfile`` (``mkdtemp``, ``TemporaryDirectory``, SpeechBrain's debug checkpoints) and the
subprocesses a test starts (``$TMPDIR``) are pointed at a fresh folder from ``tmp_path_factory``
(beside the test's ``tmp_path``, which stays as the test made it), so a run leaves nothing behind
outside pytest's own temporary folders.
"""

import json
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _temporary_files_in_pytest_folders(tmp_path_factory, monkeypatch):
    scratch = tmp_path_factory.mktemp("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    yield


def toy_run(folder) -> Path:
    """A tiny run folder (model_config.json and one checkpoint with ``pesq: 2.0``), for the doctests."""
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.models import SpectralUNetSE

    run = Path(folder)
    model = SpectralUNetSE(channels=(4,), bottleneck_dim=8, rnn_layers=1)
    run.mkdir(parents=True, exist_ok=True)
    (run / "model_config.json").write_text(json.dumps({"class": "sb_mal.models.SpectralUNetSE", "kwargs": model.config,
                                                       "sample_rate": 16000}))
    Checkpointer(run / "save", {"model": model}).save_checkpoint(meta={"pesq": 2.0})
    return run


@pytest.fixture(autouse=True)
def _doctest_helpers(doctest_namespace):
    doctest_namespace["toy_run"] = toy_run
