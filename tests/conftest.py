"""Shared fixtures: the real-audio devset from ../shared/data/devset."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# the cross-run cache of metric scores (sb_mal.metrics.cache): a fresh one for each test session
os.environ["SB_MAL_CACHE"] = tempfile.mkdtemp(prefix="sb_mal_test_cache_")

#: Every test has one kind: unit (one object, fast), integration (several parts: a Brain, a loader, a
#: CLI command), recipe (a training recipe end to end) or gpu (needs CUDA). A test or module marks its
#: kind itself; otherwise its file's default below applies (doctests are unit tests).
KINDS = ("unit", "integration", "recipe", "gpu")
DEFAULT_KIND = {
    "test_audio.py": "unit", "test_backbone.py": "unit", "test_cli.py": "integration", "test_codec.py": "unit",
    "test_codec_recipe.py": "integration", "test_composite.py": "unit", "test_dnsmos.py": "integration",
    "test_inference.py": "integration", "test_iterative.py": "integration", "test_losses.py": "unit",
    "test_mal.py": "integration", "test_manifest.py": "unit", "test_metricgan_okd.py": "integration",
    "test_metrics.py": "integration", "test_mini.py": "integration", "test_mixing.py": "unit",
    "test_peers.py": "integration", "test_pift.py": "integration", "test_separation.py": "integration",
    "test_soft_dtw.py": "unit", "test_ssl.py": "unit", "test_voicebank.py": "integration",
}


def pytest_collection_modifyitems(config, items):
    """Give every test its kind (see KINDS); a test file without a default kind is an error."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        if isinstance(item, pytest.DoctestItem):
            kind = "unit"
        else:
            kind = DEFAULT_KIND.get(item.path.name)
            if kind is None:
                raise pytest.UsageError(f"{item.path.name}: mark its tests unit, integration, recipe or gpu "
                                        "(or give the file a default kind in tests/conftest.py)")
        item.add_marker(getattr(pytest.mark, kind))


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


def link_pairs(pairs, folder) -> Path:
    """``folder/noisy/<id>.flac`` and ``folder/clean/<id>.flac`` as links to ``pairs`` (id, noisy, clean)."""
    folder = Path(folder)
    for sub in ("noisy", "clean"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for uid, noisy, clean in pairs:
        os.symlink(noisy, folder / "noisy" / f"{uid}.flac")
        os.symlink(clean, folder / "clean" / f"{uid}.flac")
    return folder


@pytest.fixture(scope="session")
def devset_test_arrays(devset_test_pairs):
    """The first four devset test pairs loaded as arrays: (ids, noisy, clean)."""
    from sb_mal.audio import read_audio

    chosen = devset_test_pairs[:4]
    noisy = [read_audio(n, as_numpy=True)[0] for _, n, _ in chosen]
    clean = [read_audio(c, as_numpy=True)[0] for _, _, c in chosen]
    return [u for u, _, _ in chosen], noisy, clean


@pytest.fixture(scope="module")
def one_thread():
    """Pin torch to one thread for a module (tiny models gain nothing from more; a busy 2-core
    machine makes extra threads ~3x slower), restoring the previous setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_wavlm_dir(tmp_path_factory):
    """A tiny random WavLM (2 layers, hidden 64, seed 0) saved with save_pretrained; loaded offline."""
    from sb_mal.models import build_tiny_wavlm

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        folder = tmp_path_factory.mktemp("tiny_wavlm")
        build_tiny_wavlm(folder, seed=0)
        yield folder


def tiny_unet(seed: int = 0):
    """A small SpectralUNetSE (fast enough for any test)."""
    from sb_mal.models import SpectralUNetSE

    torch.manual_seed(seed)
    return SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1)


def make_run(folder: Path, model_kwargs=None, sample_rate: int = 16000):
    """A run folder as EnhanceBrain leaves it: model_config.json and three checkpoints
    (pesq 1.5 / loss 0.9, pesq 2.5 / loss 1.2, and an intra-epoch one without metrics).

    Returns ``(folder, {checkpoint name: state_dict})``.
    """
    from speechbrain.utils.checkpoints import Checkpointer

    model = tiny_unet()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"class": "sb_mal.models.backbone.SpectralUNetSE", "kwargs": model_kwargs or model.config,
           "sample_rate": sample_rate}
    (folder / "model_config.json").write_text(json.dumps(cfg))
    ckpt = Checkpointer(folder / "save", {"model": model})
    states = {}
    for name, meta, end in [("a", {"pesq": 1.5, "loss": 0.9}, True), ("b", {"pesq": 2.5, "loss": 1.2}, True),
                            ("c", {}, False)]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ckpt.save_checkpoint(meta=meta, name=name, end_of_epoch=end)
        states[name] = {k: v.clone() for k, v in model.state_dict().items()}
    return folder, states
