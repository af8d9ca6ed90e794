"""What benchmarks/sprint.py takes to a lent GPU machine and brings back: the pack, the packages, the
preloaded data and the resumable state.

The pack (``python benchmarks/sprint.py --pack``, on the CPU machine) is one ignored folder of the
repository (``.sprint/`` by default, added to ``.git/info/exclude``), carried into a device call
with ``carry: [".sprint"]``:

``wheels/``
    the packages the device image lacks, for CPython 3.12 on x86-64 Linux (the image's python3):
    SpeechBrain, HyperPyYAML, ruamel.yaml (+ its C loader), pystoi, soundfile (+ cffi), lameenc, pesq (no
    binary wheel on PyPI: built here by a local CPython 3.12). torch, torchaudio, numpy, scipy,
    transformers, onnxruntime, numba and matplotlib are in the image and are not carried.
``site/speechmos/``
    the two DNSMOS ONNX models of the speechmos wheel that sb_mal.metrics.dnsmos reads (the wheel
    itself is 11 MB of other models).
``site/resemblyzer/pretrained.pt``
    the LSTM weights of Resemblyzer's speaker encoder, the feature model of the position-invariant
    fine-tuning runs (5.2 MiB of the 16 MiB file, which also holds the optimiser's state), as plain
    tensors; a folder without ``__init__.py``, where sb_mal.models.frame_features finds the weights and
    an installed Resemblyzer package, if the image has one, still wins.
``devset/``
    a subset of the devset (FLAC, as it is): all or the first ``--test-pairs`` test pairs, the
    first ``--valid-pairs`` valid pairs, every ``k``-th training utterance of each voice, the first
    seconds of every training noise, one music file and a few held-out utterances for the codec
    net; sized to what the call may carry.
``state/``
    ``sprint_state.tar.gz`` of the previous call, put there by ``sprint.py --take`` (resume).

Everything a call carries (the working tree and ``.sprint/``) must stay under 64 MiB; the pack is
sized to leave ``--state-reserve`` MiB for the state.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
#: What one device call may carry in all (working tree + carried folders).
CARRY_LIMIT = 64 * MIB
#: Packages the device image lacks (name==version as installed here).
WHEELS = ["speechbrain==1.1.2", "hyperpyyaml==1.2.3", "ruamel.yaml==0.18.17", "ruamel.yaml.clib==0.2.15",
          "pystoi==0.4.1", "soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12", "lameenc==1.9.0"]
#: Packages without a binary wheel for the device: built here with a local CPython 3.12.
BUILT = ["pesq==0.0.4"]
#: The modules sprint.py needs importable (checked before anything is installed).
NEEDED_MODULES = ["torch", "torchaudio", "speechbrain", "hyperpyyaml", "ruamel.yaml", "pesq", "pystoi", "soundfile",
                  "lameenc", "transformers", "onnxruntime", "scipy", "matplotlib", "yaml", "numba"]
DNSMOS_MODELS = ["sig_bak_ovr.onnx", "model_v8.onnx"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (a file: its size; links not followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what a device call sends besides carried folders: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sum((repo / f).stat().st_size for f in out.split("\0") if f and (repo / f).is_file())


def ignore_locally(repo: Path, rel: str) -> None:
    """Add ``/rel/`` to ``.git/info/exclude`` (the pack never travels as untracked files, nor is committed)."""
    exclude = repo / ".git" / "info" / "exclude"
    if not exclude.parent.is_dir():
        return
    line = f"/{rel.strip('/')}/"
    text = exclude.read_text() if exclude.exists() else ""
    if line not in text.split("\n"):
        exclude.write_text(text.rstrip("\n") + ("\n" if text.strip() else "") + line + "\n")


# -- the data subset ---------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst.stat().st_size


def _excerpt(src: Path, dst: Path, seconds: float) -> int:
    """The first ``seconds`` of ``src`` written as 16-bit FLAC (samples unchanged; the whole file if shorter)."""
    import soundfile as sf

    info = sf.info(str(src))
    frames = int(seconds * info.samplerate)
    if frames >= info.frames:
        return _copy(src, dst)
    data, rate = sf.read(str(src), frames=frames, dtype="int16", always_2d=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dst), data, rate, subtype="PCM_16", format="FLAC")
    return dst.stat().st_size


def _flacs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.flac") if not p.name.startswith("."))


def make_subset(src: Path, dst: Path, *, test_pairs: int | None, valid_pairs: int, heldout_per_voice: int,
                music_files: int, budget: int, noise_share: float = 0.35, speech_files: int | None = None,
                noise_seconds: float | None = None) -> dict:
    """A devset subset in ``dst`` (same layout) that the experiments read, fitting ``budget`` bytes.

    The fixed parts first (test and valid pairs, held-out speech and music for the codec net); what is
    left of ``budget`` goes to training speech (every k-th utterance of each voice, k as small as fits)
    and, ``noise_share`` of it, to the first seconds of every training noise file (every noise kept).
    ``speech_files`` / ``noise_seconds`` fix those instead (the smoke run). Returns what was taken.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    used = 0
    taken: dict = {}
    for split, limit in (("test", test_pairs), ("valid", valid_pairs)):
        noisy = _flacs(src / "pairs" / split / "noisy")[:limit]
        for path in noisy:
            used += _copy(path, dst / "pairs" / split / "noisy" / path.name)
            used += _copy(src / "pairs" / split / "clean" / path.name, dst / "pairs" / split / "clean" / path.name)
        taken[f"pairs/{split}"] = len(noisy)
    for split in ("valid", "test"):  # held-out utterances of each voice (the codec net's validation and test)
        count = 0
        for voice in sorted(p for p in (src / "speech" / split).iterdir() if p.is_dir()):
            for path in _flacs(voice)[:heldout_per_voice]:
                used += _copy(path, dst / "speech" / split / voice.name / path.name)
                count += 1
        taken[f"speech/{split}"] = count
    music = sorted(_flacs(src / "music" / "train"), key=lambda p: p.stat().st_size)[:music_files]
    for path in music:  # the smallest pieces, train part and test part of the same piece
        used += _copy(path, dst / "music" / "train" / path.name)
        used += _copy(src / "music" / "test" / path.name, dst / "music" / "test" / path.name)
    taken["music"] = [p.name for p in music]
    left = budget - used
    if left <= 0 and speech_files is None:
        raise SystemExit(f"the fixed part of the devset subset takes {used / MIB:.1f} MiB, over the "
                         f"{budget / MIB:.1f} MiB left for data: fewer --test-pairs / --valid-pairs")
    noises = _flacs(src / "noise" / "train")
    if noise_seconds is None:  # every noise file, the same length of each, noise_share of what is left
        rates = [p.stat().st_size / max(1e-9, _seconds(p)) for p in noises]
        noise_seconds = max(2.0, noise_share * left / max(1.0, sum(rates)))
    noise_bytes = sum(_excerpt(p, dst / "noise" / "train" / p.name, noise_seconds) for p in noises)
    used += noise_bytes
    taken["noise/train"] = {"files": len(noises), "seconds_each_at_most": round(noise_seconds, 1),
                            "MiB": round(noise_bytes / MIB, 2)}
    voices = sorted(p for p in (src / "speech" / "train").iterdir() if p.is_dir())
    per_voice = {v.name: _flacs(v) for v in voices}
    if speech_files is not None:
        chosen = {v: files[:: max(1, len(files) // max(1, speech_files // len(voices)))][: speech_files // len(voices)]
                  for v, files in per_voice.items()}
    else:
        room = budget - used
        total = sum(p.stat().st_size for files in per_voice.values() for p in files)
        step = 1
        while total / step > room:
            step += 1
        chosen = {v: files[::step] for v, files in per_voice.items()}
        taken["speech/train every"] = step
    count = 0
    for voice, files in chosen.items():
        for path in files:
            used += _copy(path, dst / "speech" / "train" / voice / path.name)
            count += 1
    taken["speech/train"] = {"files": count, "of": sum(len(f) for f in per_voice.values())}
    taken["MiB"] = round(used / MIB, 2)
    (dst / "SUBSET.json").write_text(json.dumps({"source": str(src), **taken}, indent=1))
    return taken


def _seconds(path: Path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


# -- the packages ------------------------------------------------------------------------------------
def find_python312() -> str | None:
    """A local CPython 3.12 (to build the wheels PyPI has only as source), or None."""
    for candidate in [shutil.which("python3.12"), *sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]:
        if candidate and subprocess.run([str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                                        capture_output=True, check=False).returncode == 0:
            return str(candidate)
    return None


def download_wheels(folder: Path, python312: str | None) -> list[str]:
    """The wheels of :data:`WHEELS` (binary, for CPython 3.12 on x86-64 Linux) and :data:`BUILT` (built by
    ``python312``) into ``folder``; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + WHEELS, check=True)
    if BUILT:
        if python312 is None:
            raise SystemExit(f"no CPython 3.12 here to build {BUILT} for the device (give --python312 PATH)")
        subprocess.run([python312, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(folder), *BUILT], check=True)
    return sorted(p.name for p in folder.glob("*.whl"))


def copy_dnsmos_models(site: Path) -> None:
    """sb_mal.metrics.dnsmos's two ONNX models in ``site/speechmos/dnsmos_models`` (found as speechmos)."""
    import importlib.util

    spec = importlib.util.find_spec("speechmos")
    if spec is None or spec.origin is None:
        raise SystemExit("speechmos is not installed here: pip install speechmos (its DNSMOS models are packed)")
    models = Path(spec.origin).parent / "dnsmos_models"
    target = site / "speechmos" / "dnsmos_models"
    target.mkdir(parents=True, exist_ok=True)
    (site / "speechmos" / "__init__.py").write_text("")
    for name in DNSMOS_MODELS:
        shutil.copy2(models / name, target / name)


def copy_resemblyzer_weights(site: Path) -> None:
    """The LSTM tensors of the installed Resemblyzer's ``pretrained.pt`` (what
    :class:`sb_mal.models.frame_features.ResemblyzerFeatureExtractor` reads) in ``site/resemblyzer/``."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("resemblyzer is not installed here: pip install \"sb_mal[encoders]\" (its weights are packed)")
    source = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    state = torch.load(source, map_location="cpu", weights_only=True)
    state = state.get("model_state", state)
    lstm = {k: v.clone() for k, v in state.items() if k.startswith("lstm.")}
    if not lstm:
        raise SystemExit(f"{source}: no LSTM weights (lstm.*) in it")
    target = site / "resemblyzer"
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "pretrained.pt.tmp"
    torch.save({"model_state": lstm}, tmp)
    tmp.replace(target / "pretrained.pt")


def missing_modules(modules: Iterable[str] = NEEDED_MODULES, env: dict | None = None) -> list[str]:
    """The modules of ``modules`` that this Python cannot import (each imported in a child, as the runs will:
    a package whose own dependency is missing counts as missing)."""
    code = ("import importlib, sys\nbad = []\n"
            f"for m in {list(modules)!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except Exception as err:\n        bad.append(m)\n        print(m, repr(err), file=sys.stderr)\n"
            "print(' '.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    return out.stdout.split()


def install_pack(pack: Path, target: Path, env: dict) -> list[str]:
    """Install the pack's wheels into ``target`` (no index, no dependencies) when a needed module is missing,
    and put ``target`` and the pack's ``site/`` on ``env['PYTHONPATH']`` (and this process's path).
    Returns what it did, one line each."""
    notes = []
    paths = [str(REPO)]
    if (pack / "site").is_dir():
        paths.append(str(pack / "site"))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    missing = missing_modules(env=env)
    if missing:
        wheels = sorted((pack / "wheels").glob("*.whl"))
        if not wheels:
            raise SystemExit(f"missing {missing} and no wheels in {pack / 'wheels'} (make the pack: "
                             "python benchmarks/sprint.py --pack)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(target), env["PYTHONPATH"]])
        notes.append(f"installed {len(wheels)} wheels into {target} (missing before: {' '.join(missing)})")
        missing = missing_modules(env=env)
        if missing:
            raise SystemExit(f"still missing after installing the pack's wheels: {missing}")
    for path in reversed(env["PYTHONPATH"].split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    return notes


# -- preloading ----------------------------------------------------------------------------------------
def _to_wav(job: tuple[str, str]) -> int:
    import soundfile as sf

    src, dst = job
    data, rate = sf.read(src, dtype="int16", always_2d=False)
    sf.write(dst, data, rate, subtype="PCM_16", format="WAV")
    return len(data)


def preload(src: Path, dst: Path, jobs: int, decode: Iterable[str] = ("speech/train", "noise/train")) -> dict:
    """``dst``: the devset ``src`` with the training folders ``decode`` decoded once to 16-bit WAV (the
    mixer reads excerpts with no decoding: same samples), everything else linked to ``src``. Done once
    per machine (``dst/PRELOADED.json`` marks it). Returns the counts."""
    src, dst = Path(src).resolve(), Path(dst)
    marker = dst / "PRELOADED.json"
    if marker.exists() and json.loads(marker.read_text()).get("source") == str(src):
        return json.loads(marker.read_text())
    if dst.exists():
        shutil.rmtree(dst)
    started = time.monotonic()
    work = []
    for rel in decode:
        for path in _flacs(src / rel):
            out = dst / path.relative_to(src).with_suffix(".wav")
            out.parent.mkdir(parents=True, exist_ok=True)
            work.append((str(path), str(out)))
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        samples = sum(pool.map(_to_wav, work, chunksize=8))
    decoded = {Path(r).parts[0] for r in decode}
    for top in sorted(p for p in src.iterdir() if p.is_dir()):
        if top.name not in decoded:
            (dst / top.name).symlink_to(top, target_is_directory=True)
        else:  # speech/: train decoded, valid and test linked
            for sub in sorted(p for p in top.iterdir() if p.is_dir()):
                if f"{top.name}/{sub.name}" not in decode:
                    (dst / top.name / sub.name).symlink_to(sub, target_is_directory=True)
    info = {"source": str(src), "files": len(work), "minutes": round(samples / 16000 / 60, 1),
            "seconds_to_decode": round(time.monotonic() - started, 1)}
    marker.write_text(json.dumps(info))
    return info


# -- the state ----------------------------------------------------------------------------------------------
def save_state(work: Path, dest: Path, keep: Callable[[Path], bool], roots: Iterable[str],
               log_tail: int = 256 * 1024) -> int:
    """``dest`` (.tar.gz): the files ``work/<root>`` and those under the folders ``work/<root>`` for which
    ``keep(path relative to work)`` is true; of a ``.log`` file longer than ``log_tail`` bytes (progress bars
    of thousands of steps), its end. Returns its size in bytes."""
    work = Path(work)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for root in roots:
            base = work / root
            if not base.exists():
                continue
            for path in [base] if base.is_file() else sorted(base.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                rel = path.relative_to(work)
                if not keep(rel):
                    continue
                size = path.stat().st_size
                if path.suffix == ".log" and size > log_tail:
                    with open(path, "rb") as fin:
                        fin.seek(size - log_tail)
                        data = b"[... the log's start left out ...]\n" + fin.read()
                    info = tarfile.TarInfo(str(rel))
                    info.size, info.mtime = len(data), int(path.stat().st_mtime)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.add(path, arcname=str(rel), recursive=False)
    tmp.replace(dest)
    return dest.stat().st_size


def restore_state(tar_path: Path, work: Path) -> int:
    """Unpack a :func:`save_state` archive into ``work`` (modification times kept); returns the files."""
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not (m.name.startswith("/") or ".." in m.name.split("/"))]
        tar.extractall(work, members=members)
    return len(members)


# -- the pack ---------------------------------------------------------------------------------------------
def build_pack(pack: Path, devset: Path, *, test_pairs: int | None, valid_pairs: int, state_reserve_mib: float,
               python312: str | None, with_wheels: bool = True) -> dict:
    """Make the pack folder (see the module docstring); returns its description (also ``pack/PACK.json``)."""
    pack = Path(pack)
    if pack.resolve().is_relative_to(REPO):
        ignore_locally(REPO, str(pack.resolve().relative_to(REPO)))
    pack.mkdir(parents=True, exist_ok=True)
    notes = {}
    if with_wheels:
        if (pack / "wheels").exists():
            shutil.rmtree(pack / "wheels")
        notes["wheels"] = download_wheels(pack / "wheels", python312)
    copy_dnsmos_models(pack / "site")
    copy_resemblyzer_weights(pack / "site")
    state = folder_bytes(pack / "state") if (pack / "state").exists() else 0
    fixed = tree_bytes() + folder_bytes(pack / "wheels") + folder_bytes(pack / "site")
    budget = int(CARRY_LIMIT - fixed - state_reserve_mib * MIB - 0.5 * MIB)
    notes["devset"] = make_subset(devset, pack / "devset", test_pairs=test_pairs, valid_pairs=valid_pairs,
                                  heldout_per_voice=4, music_files=1, budget=budget)
    sizes = {"working tree": tree_bytes(), "wheels": folder_bytes(pack / "wheels"), "site": folder_bytes(pack / "site"),
             "devset": folder_bytes(pack / "devset"), "state (now)": state}
    total = sum(sizes.values())
    desc = {"made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes_MiB": {k: round(v / MIB, 2)
                                                                                     for k, v in sizes.items()},
            "total_MiB": round(total / MIB, 2), "limit_MiB": CARRY_LIMIT // MIB,
            "state_reserve_MiB": state_reserve_mib, **notes}
    (pack / "PACK.json").write_text(json.dumps(desc, indent=1))
    return desc


def carried_bytes(pack: Path) -> dict:
    """What a call carrying ``pack`` sends: the working tree, the pack, and their sum (bytes)."""
    tree, packed = tree_bytes(), folder_bytes(pack)
    return {"working tree": tree, "pack": packed, "total": tree + packed}
