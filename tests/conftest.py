"""Shared fixtures: the real-audio devset from ../shared/data/devset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def devset_root() -> Path:
    """The devset folder: $SB_MAL_DEVSET, else ../shared/data/devset beside the repository."""
    env = os.environ.get("SB_MAL_DEVSET")
    return Path(env) if env else REPO.parent / "shared" / "data" / "devset"


@pytest.fixture(scope="session")
def devset() -> Path:
    """Path of the real-audio devset (tests needing it are skipped, loudly, when it is absent)."""
    root = devset_root()
    if not (root / "pairs" / "test" / "manifest.csv").is_file():
        pytest.skip(f"devset not found at {root} (set SB_MAL_DEVSET)")
    return root


@pytest.fixture(scope="session")
def devset_test_pairs(devset) -> list[tuple[str, str, str]]:
    """(id, noisy_path, clean_path) of the 120 devset test pairs, sorted by id."""
    noisy = sorted((devset / "pairs" / "test" / "noisy").glob("*.flac"))
    return [(p.stem, str(p), str(devset / "pairs" / "test" / "clean" / p.name)) for p in noisy]
