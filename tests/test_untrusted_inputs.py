"""Hostile or broken model folders, missing extras, killed writes: one clear line, no code run, nothing lost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sb_mal.checkpoints import ModelLoadError, load_pretrained
from sb_mal.cli import main
from sb_mal.inference import Enhancer
from sb_mal.trust import UntrustedCodeError

from conftest import make_run  # noqa: E402  (shared test helpers)
from sb_folders import waveform_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture()
def exported(tmp_path):
    run, _ = make_run(tmp_path / "run")
    assert main(["export", str(run), "-o", str(tmp_path / "model"), "--key", "loss", "--min"]) == 0
    return tmp_path / "model"


def _damage(folder: Path, how: str) -> Path:
    ckpt = folder / "enhance_model.ckpt"
    data = ckpt.read_bytes()
    if how == "empty":
        ckpt.write_bytes(b"")
    elif how == "truncated":
        ckpt.write_bytes(data[: len(data) // 3])
    elif how == "corrupt":
        ckpt.write_bytes(b"\x00garbage" * 64)
    elif how == "mismatched":  # hyperparameters that build another model than the checkpoint holds
        text = (folder / "hyperparams.yaml").read_text()
        (folder / "hyperparams.yaml").write_text(text.replace("bottleneck_dim: 32", "bottleneck_dim: 16"))
    return ckpt


@pytest.mark.parametrize("how,cause", [("empty", "empty file"), ("truncated", "unreadable checkpoint"),
                                       ("corrupt", "unreadable checkpoint"), ("mismatched", "does not match")])
def test_a_damaged_model_folder_is_one_line_naming_the_file(exported, tmp_path, capsys, how, cause):
    ckpt = _damage(exported, how)
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, torch.randn(8000).mul(0.1).numpy(), 16000)
    args = ["enhance", str(wav), "-o", str(tmp_path / "out"), "--source", str(exported), "--device", "cpu", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and cause in err, err
    assert str(ckpt) in err
    assert main(["-v", *args]) == 2  # the traceback only with --verbose
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match=cause):
        Enhancer.from_hparams(source=str(exported))
    if how != "mismatched":  # (load_pretrained rebuilds an export from export_info.json, not the YAML)
        with pytest.raises(ValueError, match=f"{ckpt}: (empty file|unreadable checkpoint)"):
            load_pretrained(exported)


def test_a_missing_source_path_is_not_a_hub_id(tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "in.wav", torch.randn(8000).mul(0.1).numpy(), 16000)
    for source in (str(tmp_path / "nope"), "./models/nope", "models/exported/nope"):
        with pytest.raises(ModelLoadError, match="no such file or folder"):
            Enhancer.from_hparams(source=source)
        with pytest.raises(ModelLoadError, match="no such file or folder"):
            load_pretrained(source)
        assert main(["enhance", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o"), "--source", source]) == 2
        err = capsys.readouterr().err
        assert "no such file or folder" in err and "hub" not in err.split("(")[0]


HOSTILE = {
    "apply": "x: !apply:os.system ['touch {marker}']\n",
    "python_tag": "x: !!python/object/apply:os.system ['touch {marker}']\n",
    "name_in_allowed_package": "x: !apply:torch.load ['{marker}']\n",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_model_folder_cannot_run_code_unless_trusted(exported, tmp_path, capsys, kind):
    marker = tmp_path / "code_ran"
    hp = exported / "hyperparams.yaml"
    hp.write_text(hp.read_text() + HOSTILE[kind].format(marker=marker))
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, torch.randn(8000).mul(0.1).numpy(), 16000)
    args = ["enhance", str(wav), "-o", str(tmp_path / "out"), "--source", str(exported), "--device", "cpu", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{hp}, line " in err and "--trust-code" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(UntrustedCodeError, match="outside the allow-list|not allowed"):
        Enhancer.from_hparams(source=str(exported))
    load_pretrained(exported)  # rebuilds from export_info.json: the YAML is not run at all
    assert main(["evaluate", "--clean", str(tmp_path), "--noisy", str(tmp_path), "--source", str(exported),
                 "-o", str(tmp_path / "ev")]) == 2
    assert "--trust-code" in capsys.readouterr().err
    (exported / "export_info.json").unlink()  # now the folder is loaded through its hyperparams.yaml
    with pytest.raises(UntrustedCodeError):
        load_pretrained(exported)
    assert not marker.exists()  # nothing in the file ran
    if kind == "apply":  # the user can choose to trust it
        main([*args, "--trust-code"])
        assert marker.exists()


def test_export_info_naming_a_foreign_class_is_refused(exported):
    info_file = exported / "export_info.json"
    info = json.loads(info_file.read_text())
    info["model_config"]["class"] = "subprocess.Popen"
    info_file.write_text(json.dumps(info))
    with pytest.raises(UntrustedCodeError, match="export_info.json: names 'subprocess.Popen'"):
        load_pretrained(exported)


def test_speechbrain_and_sb_mal_folders_load_without_trust(exported, tmp_path):
    assert Enhancer.from_hparams(source=str(exported)).sample_rate == 16000
    folder = waveform_folder(tmp_path / "sb")
    assert Enhancer.from_hparams(source=str(folder)).layout == "waveform"


def test_a_missing_extra_stops_the_recipe_at_start_with_the_pip_command(devset, monkeypatch, tmp_path):
    import importlib.util

    from sb_mal.brains import EnhanceBrain
    from sb_mal.metrics import MissingDependencyError, evaluate
    from sb_mal.run import load_recipe_hparams

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "speechmos" else real(name, *a))
    with pytest.raises(SystemExit, match=r'test_metrics: metric\(s\) dnsmos_sig, .* pip install "sb_mal\[dnsmos\]"'):
        load_recipe_hparams([str(REPO / "hparams/voicebank/baseline.yaml"), f"--data_folder={tmp_path}",
                             f"--output_folder={tmp_path / 'out'}"], EnhanceBrain)
    x = torch.randn(16000).numpy() * 0.1
    with pytest.raises(MissingDependencyError, match="dnsmos"):
        evaluate([x], [x], metrics=["pesq", "dnsmos"], n_jobs=0)


def test_temporaries_of_killed_writes_are_removed_and_errors_name_the_output(tmp_path, monkeypatch):
    from sb_mal import fileio

    script = ("import os, sys\nfrom sb_mal.fileio import temporary_path\n"
              "print(temporary_path(sys.argv[1]), flush=True)\nos._exit(9)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.txt")], capture_output=True, text=True)
    stale = Path(killed.stdout.strip())
    assert stale.exists() and stale.name.startswith(".tmp-")
    other_host = tmp_path / ".tmp-otherhost-1-abc"
    other_host.write_text("not ours to judge")
    fileio._CLEANED.discard(str(tmp_path))
    fileio.atomic_write_text(tmp_path / "out.txt", "done")
    assert not stale.exists() and other_host.exists() and (tmp_path / "out.txt").read_text() == "done"

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".tmp-xyz"))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'summary.json'}: Permission denied"):
        fileio.atomic_write_text(tmp_path / "summary.json", "{}")


def _wav_with_rate(path: Path, rate: int) -> Path:
    """A 244-byte WAV whose header claims ``rate`` Hz (byte rate patched to match)."""
    import struct

    import soundfile as sf

    sf.write(path, torch.zeros(100).numpy(), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", min(rate * 2, 2**32 - 1))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate", [2_147_483_647, 10])
def test_an_implausible_header_is_refused_before_any_work(tmp_path, capsys, exported, rate):
    from sb_mal.audio import AudioError, audio_info, read_audio

    bad = _wav_with_rate(tmp_path / "bad.wav", rate)
    assert bad.stat().st_size == 244
    started = time.monotonic()
    for fn in (lambda: read_audio(bad, 16000), lambda: audio_info(bad)):
        with pytest.raises(AudioError, match=f"{re.escape(str(bad))}: header claims a sample rate of {rate} Hz"):
            fn()
    assert main(["enhance", str(bad), "-o", str(tmp_path / "out"), "--source", str(exported), "-q"]) == 1
    assert f"{bad}: header claims a sample rate of {rate} Hz" in capsys.readouterr().err
    assert time.monotonic() - started < 30


def test_a_full_disk_in_enhance_names_the_file_and_the_cause(exported, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "long.wav", (0.1 * torch.randn(16000 * 30)).numpy(), 16000)
    script = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
              "from sb_mal.cli import main\n"
              f"sys.exit(main(['enhance', {str(tmp_path / 'long.wav')!r}, '-o', {str(tmp_path / 'out')!r}, "
              f"'--source', {str(exported)!r}, '-q', '--chunk-seconds', '4']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"cannot write {tmp_path / 'out' / 'long.wav'}: File too large" in proc.stderr, proc.stderr[-2000:]
    assert "System error" not in proc.stderr
    assert not list((tmp_path / "out").iterdir())  # nothing half-written left behind


def test_a_missing_device_and_missing_weights_are_one_line(exported, tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "in.wav", torch.zeros(1600).numpy(), 16000)
    if not torch.cuda.is_available():
        args = ["enhance", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out"), "--source", str(exported)]
        assert main([*args, "--device", "cuda:0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--device cuda:0" in err and "CUDA" in err, err
        assert main(["evaluate", "--clean", str(tmp_path), "--noisy", str(tmp_path), "--source", str(exported),
                     "--device", "cuda:3", "-o", str(tmp_path / "ev")]) == 2
        assert "--device cuda:3" in capsys.readouterr().err
    (exported / "enhance_model.ckpt").unlink()
    assert main(["enhance", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out"), "--source", str(exported)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{exported / 'enhance_model.ckpt'}: missing" in err, err


def test_leftovers_of_killed_enhance_and_export_are_removed_by_the_next_one(exported, tmp_path):
    import soundfile as sf

    from sb_mal.fileio import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    stale_audio = out / f".tmp-{_host()}-{dead}-abc.wav"
    stale_audio.write_bytes(b"half")
    stale_export = tmp_path / f".tmp-{_host()}-{dead}-model2-xyz"
    stale_export.mkdir()
    (stale_export / "enhance_model.ckpt").write_bytes(b"half")
    sf.write(tmp_path / "in.wav", torch.zeros(1600).numpy(), 16000)
    assert main(["enhance", str(tmp_path / "in.wav"), "-o", str(out), "--source", str(exported), "-q"]) == 0
    assert not stale_audio.exists() and (out / "in.wav").is_file()
    run = exported.parent / "run"
    assert main(["export", str(run), "-o", str(tmp_path / "model2"), "--key", "loss", "--min"]) == 0
    assert not stale_export.exists() and (tmp_path / "model2" / "enhance_model.ckpt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
